#!/usr/bin/env bash
# The paper's evaluation of one checkpoint, which is evaluate.py's defaults: bag-of-features over 128
# training-augmentation patches, weighted kNN (k 20, T 0.07) and the 100-epoch linear probe (SGD lr 0.03,
# momentum 0.9, weight decay 5e-5, batch 100, cosine). BASELINE=1 also evaluates a random-init encoder of the
# same architecture. Extra flags pass through,
# e.g. `bash scripts/eval.sh logs/EMP-SSL-Training/<run>/save_models/29.pt --data_dir /datasets/cifar10`.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt="${1:?usage: bash scripts/eval.sh <checkpoint> [evaluate.py flags]}"
shift
python evaluate.py --ckpt "$ckpt" "$@"
if [[ "${BASELINE:-0}" == 1 ]]; then
    python evaluate.py --ckpt "$ckpt" --random_init "$@"
fi
