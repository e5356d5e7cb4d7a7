#!/usr/bin/env bash
# EMP-SSL on CIFAR-10 with the paper's setting: ResNet-18 (CIFAR stem), 20 patches, batch 100,
# 30 epochs (EPOCHS=1 or 10 for the shorter rows of the results table). Extra flags pass through,
# e.g. `bash scripts/cifar10.sh --data_dir /datasets/cifar10 --msg try1`.
set -euo pipefail
cd "$(dirname "$0")/.."
python main.py --data cifar10 --arch resnet18-cifar --num_patches "${NUM_PATCHES:-20}" --epoch "${EPOCHS:-30}" \
    --patch_sim 200 --tcr 1 --eps 0.2 --bs 100 --lr 0.3 "$@"
