#!/usr/bin/env bash
# EMP-SSL on Tiny ImageNet (ImageFolder layout: <data_dir>/train/<class>/ and <data_dir>/val/<class>/):
# ResNet-18 with the standard stem, 224×224 patches, 20 patches, 10 epochs. The published 0.515
# used 200 patches (NUM_PATCHES=200), which needs far more GPU memory per step: add --patch_chunks auto
# on one GPU, or run under torchrun.
# Every other flag is main.py's default, the official value; extra flags pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
python main.py --data tinyimagenet --arch resnet18-tinyimagenet \
    --num_patches "${NUM_PATCHES:-20}" --epoch "${EPOCHS:-10}" "$@"
