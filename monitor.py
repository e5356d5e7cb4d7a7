"""The training-time learning check: a cheap weighted kNN on a few patches every few epochs."""
from __future__ import annotations

import torch

from features import PatchBatches, bag_of_features
from model import Encoder
from probes import KNN_K, KNN_T, knn_accuracy


class KNNMonitor:
    """Weighted kNN top-1 of the test split against the training split (the official protocol's k
    and T, probes.KNN_K and KNN_T), on bags of a few patches that never change between calls.

    batches: {"train": …, "test": …} evaluation patches (dataset.patches.EvaluationPatches, a fixed
    seed); the forward runs on `device`, under autocast to `dtype` when given (the run's precision).
    """

    def __init__(self, batches: dict[str, PatchBatches], num_classes: int, num_patches: int, device: torch.device,
                 dtype: torch.dtype | None) -> None:
        self.batches, self.num_classes, self.num_patches = batches, num_classes, num_patches
        self.device, self.dtype = device, dtype

    def __call__(self, model: Encoder) -> float:
        """kNN top-1 (percent) of the model's current bag-of-features (pre_feature only: the
        projection does not run)."""
        train_f, train_y = bag_of_features(model, self.batches["train"], self.device, dtype=self.dtype,
                                           desc="kNN memory")
        test_f, test_y = bag_of_features(model, self.batches["test"], self.device, dtype=self.dtype, desc="kNN test")
        on = self.device
        return knn_accuracy((train_f.to(on), train_y.to(on)), (test_f.to(on), test_y.to(on)), self.num_classes,
                            KNN_K, KNN_T)["top1"]
