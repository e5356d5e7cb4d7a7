"""Pictures in TensorBoard: the patch grids of the first training step."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from plumbing.pictures import GRID_PADDING, patch_grids


def grid_side(count: int, size: int) -> int:
    """Pixels along one side of a grid of `count` patches of `size` pixels (make_grid's layout)."""
    return count * (size + GRID_PADDING) + GRID_PADDING


class TestPatchGrids:
    def test_one_grid_per_image_holds_its_patches(self) -> None:
        """Patch-major input: grid b shows patch p of image b at cell p, de-normalised."""
        p, b, s = 5, 3, 8
        x = torch.arange(p * b, dtype=torch.float32).view(p * b, 1, 1, 1).expand(p * b, 3, s, s) / 100 - 0.5
        grids = patch_grids(x, p, images=2)
        assert len(grids) == 2 and grids[0].shape == (3, grid_side(2, s), grid_side(3, s))  # ⌈√5⌉ = 3 a row
        for image, grid in enumerate(grids):
            for patch in range(p):
                row, col = divmod(patch, 3)
                top, left = GRID_PADDING + row * (s + GRID_PADDING), GRID_PADDING + col * (s + GRID_PADDING)
                cell = grid[:, top:top + s, left:left + s]
                expected = (patch * b + image) / 100 - 0.5  # patch n = p·B + b
                torch.testing.assert_close(cell, torch.full_like(cell, expected * 0.5 + 0.5))

    @pytest.mark.parametrize("augment", ["pil", "batched"])
    def test_training_writes_p_patches_per_image(self, cli, tmp_path: Path, augment: str) -> None:
        run = tmp_path / "run"
        result = cli("main", *TINY_RUN, "--augment", augment, "--output_dir", str(run), "--max_steps", "1")
        assert result.returncode == 0, result.stderr
        events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
        tags = sorted(t for t in events.Tags()["images"] if t.startswith(f"patches/{augment}/"))
        assert tags == [f"patches/{augment}/image_{b}" for b in range(4)]
        picture = Image.open(io.BytesIO(events.Images(tags[0])[0].encoded_image_string))
        assert picture.size == (grid_side(2, 32), grid_side(2, 32))  # TINY_RUN: 4 patches of 32×32, 2 a row
