#!/usr/bin/env bash
# The first run: a small EMP-SSL model on the built-in synthetic shapes, on the CPU, in a few
# minutes, no download. Prints where the run went; evaluate it with evaluate.py --ckpt <that>/save_models/last.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
python main.py --data synthetic --arch resnet10-cifar --hidden_dim 512 --z_dim 128 \
    --num_patches 8 --bs 50 --lr 0.3 --epoch 2 --train_subset 2000 --workers 2 --device cpu \
    --dir demo --msg "$(date +%Y%m%d-%H%M%S)" "$@"
