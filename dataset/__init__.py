"""Images for EMP-SSL: the data sets, the patch augmentation and the training batches.

- :mod:`dataset.catalog`: the data sets by name (:data:`DATASETS`), :func:`build_dataset`,
  :func:`augmentation_kind` and :func:`class_balanced_subset`;
- :mod:`dataset.aug`: the official per-patch augmentation (:func:`patch_transform`,
  :class:`MultiPatch`); :mod:`dataset.batched` and :mod:`dataset.patch_ops`: the same
  distributions for a whole batch on the device;
- :mod:`dataset.source`: the training batches of a run, seeded and resumable
  (:mod:`dataset.sampler`, :mod:`dataset.seeded`); an image folder of equally sized images is
  decoded into memory once and kept on disk by :mod:`dataset.pixel_cache`;
- :mod:`dataset.synthetic`: :class:`SyntheticShapes`, a generated set with no files;
  :mod:`dataset.images`: decoding files, with a clear message for a broken one.

The names below are re-exported, so ``from dataset import build_dataset`` works.
"""

from dataset.aug import MultiPatch, patch_transform
from dataset.catalog import DATASETS, augmentation_kind, build_dataset, class_balanced_subset
from dataset.synthetic import SyntheticShapes

__all__ = [
    "DATASETS",
    "MultiPatch",
    "SyntheticShapes",
    "augmentation_kind",
    "build_dataset",
    "class_balanced_subset",
    "patch_transform",
]
