#!/usr/bin/env bash
# The first run: installs what is missing, trains a small EMP-SSL model on the built-in synthetic shapes
# on the CPU (no download), then evaluates it and the same encoder untrained with a cheap kNN, prints both,
# the run folder, how to open its TensorBoard logs, and the evaluate.py command that fits this machine.
# Extra flags go to main.py. PYTHON picks the interpreter (default: python3, else python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
"$PYTHON" -c "import torch, torchvision, numpy, tqdm, tensorboard" 2>/dev/null || "$PYTHON" -m pip install -r requirements.txt
run="logs/demo/$(date +%Y%m%d-%H%M%S)"
"$PYTHON" main.py --data synthetic --arch resnet10-cifar --hidden_dim 512 --z_dim 128 \
    --num_patches 8 --bs 50 --epoch 2 --train_subset 2000 --workers 2 --device cpu \
    --output_dir "$run" "$@"
probe=(--ckpt "$run/save_models/last.pt" --train_subset 2000 --test_patches 8 --no-linear --workers 2)
"$PYTHON" evaluate.py "${probe[@]}"
"$PYTHON" evaluate.py "${probe[@]}" --random_init
"$PYTHON" - "$run/save_models" <<'PY'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
trained, untrained = (json.loads((folder / name).read_text())["knn"]["top1"]
                      for name in ("last.eval.json", "last.random_init.eval.json"))
print(f"kNN top-1 on the synthetic test set (8 patches per image): trained {trained:.1f}%, "
      f"untrained {untrained:.1f}%, chance 10%")
PY
echo "run folder: $run   (TensorBoard: tensorboard --logdir $run)"
if "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "the paper's evaluation (128 patches, kNN and the 100-epoch linear probe) on this GPU:"
    echo "  python evaluate.py --ckpt $run/save_models/last.pt --precision bf16 --channels_last"
else
    echo "the paper's evaluation (128 patches of 6,000 images: about 10 minutes on 2 CPU cores) is python evaluate.py --ckpt $run/save_models/last.pt; a quick one with the linear probe:"
    echo "  python evaluate.py --ckpt $run/save_models/last.pt --train_subset 2000 --test_patches 8 --linear_epochs 20  # ~15 s"
fi
