#!/usr/bin/env bash
# The GPU check: the fast path on real data end to end in one call, every stage kept, a verdict at the end.
# Stages: versions, a step under CUDA's sync debug mode, CIFAR-10's official one-epoch row on the fast path,
# its 128-patch evaluation (bf16, channels_last) and random-init baseline, the benchmark on the same data.
# Small outputs (gpu_check.json, gpu_check.md, gpu_check.log) go to <out>/attempt-N/, checkpoints and caches
# to <work_dir>/attempt-N/; every call is a new attempt. Exit status 0: every stage ran, every check passed.
#   bash scripts/gpu_check.sh --data_dir /data/cifar10               # ImageFolder tree or torchvision's CIFAR-10
#   bash scripts/gpu_check.sh --data_dir /data/cifar10 --out /results/gpu_check --work_dir /scratch/gpu_check
#   bash scripts/gpu_check.sh --tiny --data_dir /data/cifar10         # the same chain on the CPU, toy sizes
#   bash scripts/gpu_check.sh --help                                  # every flag; scripts/gpu_check.py: details
# Paths are relative to the folder it is called from. PYTHON picks the interpreter (default: python3, else python).
set -euo pipefail
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
exec "$PYTHON" "$(dirname "$0")/gpu_check.py" "$@"
