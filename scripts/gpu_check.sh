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
# Paths are relative to the folder it is called from. PYTHON picks the interpreter (default: python3, else python);
# one that cannot import the requirements stops here with one line (exit 2), before anything is written.
set -euo pipefail
PYTHON="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [ -z "$PYTHON" ]; then
    echo "error: neither python3 nor python is on PATH: install Python 3 and requirements.txt, or set PYTHON" >&2
    exit 2
elif ! command -v "$PYTHON" >/dev/null; then
    echo "error: PYTHON=$PYTHON is not a program: set PYTHON to a Python 3 that has requirements.txt" >&2
    exit 2
fi
if ! problem="$("$PYTHON" -c "import torch, torchvision, numpy, tqdm, tensorboard" 2>&1)"; then
    echo "error: $PYTHON cannot import the requirements ($(printf '%s\n' "$problem" | tail -n 1)): install them with" \
         "$PYTHON -m pip install -r $(dirname "$0")/../requirements.txt, or set PYTHON to a Python that has them" >&2
    exit 2
fi
exec "$PYTHON" "$(dirname "$0")/gpu_check.py" "$@"
