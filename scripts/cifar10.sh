#!/usr/bin/env bash
# EMP-SSL on CIFAR-10 with the paper's setting: ResNet-18 (CIFAR stem), 20 patches, batch 100,
# 30 epochs (EPOCHS=10 for the 10-epoch row). The official one-epoch row is EPOCHS=2 with `--train_epochs 1`
# (checkpoint save_models/0.pt); `python scripts/reproduce.py cifar10-1ep` runs it. Extra flags pass through,
# e.g. `bash scripts/cifar10.sh --data_dir /datasets/cifar10 --msg try1`.
# Every other flag is main.py's default, the official value.
set -euo pipefail
cd "$(dirname "$0")/.."
python main.py --data cifar10 --arch resnet18-cifar --num_patches "${NUM_PATCHES:-20}" --epoch "${EPOCHS:-30}" "$@"
