#!/usr/bin/env bash
# The first run: a small EMP-SSL model on the built-in synthetic shapes, on the CPU, in a few
# minutes, no download. Prints where the run went; evaluate it with evaluate.py --ckpt <that>/save_models/last.pt.
set -euo pipefail
cd "$(dirname "$0")/.."
msg="$(date +%Y%m%d-%H%M%S)"
python main.py --data synthetic --arch resnet10-cifar --hidden_dim 512 --z_dim 128 \
    --num_patches 8 --bs 50 --lr 0.3 --epoch 2 --train_subset 2000 --workers 2 --device cpu \
    --dir demo --msg "$msg" "$@"
echo "evaluate it: python evaluate.py --ckpt logs/demo/patchsim200_numpatch8_bs50_lr0.3_$msg/save_models/last.pt --test_patches 8 --no-linear"
