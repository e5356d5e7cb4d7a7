#!/usr/bin/env bash
# One call that checks the GPU path end to end (at most about 8 minutes on one H100/H200, no downloads):
# versions, the --full benchmark (bf16, channels_last), CIFAR-10's official one-epoch protocol on the fast
# path, its 128-patch evaluation and random-init baseline, one JSON and one table. See scripts/gpu_check.py.
#   bash scripts/gpu_check.sh --data_dir /data/cifar10     # torchvision CIFAR-10 folder or an ImageFolder tree
#   bash scripts/gpu_check.sh                              # no data at hand: the built-in synthetic set
#   bash scripts/gpu_check.sh --tiny                       # the same chain on the CPU in seconds (tested)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_check.py "$@"
