#!/usr/bin/env bash
# The first run: installs what is missing, trains a small EMP-SSL model on the built-in synthetic shapes
# on the CPU (no download), then evaluates it and the same encoder untrained with a cheap kNN, and
# prints both, the run folder and how to open its TensorBoard logs. Extra flags go to main.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, torchvision, numpy, tqdm, tensorboard" 2>/dev/null || python -m pip install -r requirements.txt
run="logs/demo/$(date +%Y%m%d-%H%M%S)"
python main.py --data synthetic --arch resnet10-cifar --hidden_dim 512 --z_dim 128 \
    --num_patches 8 --bs 50 --epoch 2 --train_subset 2000 --workers 2 --device cpu \
    --output_dir "$run" "$@"
probe=(--ckpt "$run/save_models/last.pt" --train_subset 2000 --test_patches 8 --no-linear --workers 2)
python evaluate.py "${probe[@]}"
python evaluate.py "${probe[@]}" --random_init
python - "$run/save_models" <<'PY'
import json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
trained, untrained = (json.loads((folder / name).read_text())["knn"]["top1"]
                      for name in ("last.eval.json", "last.random_init.eval.json"))
print(f"kNN top-1 on the synthetic test set (8 patches per image): trained {trained:.1f}%, "
      f"untrained {untrained:.1f}%, chance 10%")
PY
echo "run folder: $run   (TensorBoard: tensorboard --logdir $run)"
