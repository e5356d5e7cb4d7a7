"""evaluate.py beyond the bag of patches: the single full view, and what it writes for TensorBoard."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchvision.transforms import functional as TF

from dataset import DATASETS, SyntheticShapes
from features import bag_of_features, full_view_loader
from model import Encoder
from plumbing.checkpoint import save_checkpoint

ARCH = {"arch": "resnet10-cifar", "hidden_dim": 16, "z_dim": 8}
QUICK = ["--train_subset", "20", "--test_subset", "10", "--workers", "0", "--device", "cpu"]


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "run" / "save_models" / "0.pt"
    save_checkpoint({"model": Encoder(**ARCH).state_dict(), "args": {"data": "synthetic", **ARCH}}, path)
    return path


class TestFullView:
    def test_feature_is_pre_feature_of_the_normalised_whole_image(self) -> None:
        torch.manual_seed(0)
        model = Encoder(**ARCH).eval()
        images = torch.utils.data.Subset(SyntheticShapes(train=False), range(6))
        batches = full_view_loader(images, DATASETS["synthetic"], 4, 0)
        features, labels = bag_of_features(model, batches, torch.device("cpu"))
        x = torch.stack([TF.to_tensor(images[i][0]) for i in range(6)]) * 2 - 1  # (6, 3, 32, 32), Normalize(0.5, 0.5)
        with torch.no_grad():
            _, expected = model(x)  # (6, hidden)
        torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-6)
        assert labels.tolist() == [images[i][1] for i in range(6)]

    def test_evaluate_view_full_is_reported_beside_the_default(self, cli, ckpt: Path) -> None:
        patches = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--test_patches", "2", "--no-linear")
        full = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--view", "full", "--no-linear",
                   "--output", str(ckpt.with_name("full.json")))
        assert patches.returncode == 0 and full.returncode == 0, full.stderr
        assert "(one full view)" in full.stdout and "(2 patches)" in patches.stdout
        assert len(list(ckpt.parent.glob("0.pt.test-*.features"))) == 2  # two cache entries, one per view


class TestTensorBoard:
    def test_probe_curves_and_the_embedding_for_the_projector(self, cli, ckpt: Path) -> None:
        result = cli("evaluate", "--ckpt", str(ckpt), *QUICK, "--test_patches", "2", "--linear_epochs", "3",
                     "--embedding", "8")
        assert result.returncode == 0, result.stderr
        board = ckpt.with_name("0.eval.tensorboard")
        events = EventAccumulator(str(board)).Reload()
        assert [e.step for e in events.Scalars("linear_probe/test_top1")] == [1, 2, 3]
        losses = [e.value for e in events.Scalars("linear_probe/train_loss")]
        assert len(losses) == 3 and all(v > 0 for v in losses)
        (config,) = board.rglob("projector_config.pbtxt")
        (metadata,) = board.rglob("metadata.tsv")
        assert len(metadata.read_text().splitlines()) == 8
        assert list(board.rglob("sprite.png")) and "sprite" in config.read_text()
