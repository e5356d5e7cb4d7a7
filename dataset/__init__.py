"""Images for EMP-SSL: the data sets, the patch augmentation and where the patches come from.

- :mod:`dataset.catalog`: the one table of data sets (:data:`DATASETS`, each with its augmentation
  kind and patch size), :func:`build_dataset`, :func:`load_split` (with a fixed class-balanced
  subset), :func:`augmentation_kind`, :func:`patch_spec` (a run's patch kind and size);
- :mod:`dataset.pil_pipeline`: the official per-patch PIL augmentation (:func:`patch_transform`,
  :class:`MultiPatch`) and its constants, the reference of the batched path;
- :mod:`dataset.draws`: the random parameters of every patch of a batch, from the official
  distributions; :mod:`dataset.image_ops`: the batched image operations that apply them;
  :mod:`dataset.batched_pipeline`: the two together, all patches of a batch at once on the device;
  :mod:`dataset.resampling`: Pillow's own resampling by taps (the ImageNet kind's crops, byte-exact)
  and the box draws for images of different sizes;
- :mod:`dataset.patch_sources`: the patches of training steps (:class:`TrainingPatches`) and of
  evaluation sweeps (:class:`EvaluationPatches`), made by either path (:data:`AUGMENTS`);
- :mod:`dataset.seeding`: the one hash chain every random stream derives from (epoch order,
  patches, steps, evaluation); :mod:`dataset.sampler`: the seeded, resumable, rank-aware order;
- :mod:`dataset.pixels`: a data set's images as one uint8 array, image folders decoded once;
- :mod:`dataset.synthetic`: :class:`SyntheticShapes`, a generated set with no files;
  :mod:`dataset.images`: decoding files, with a clear message for a broken one.

The names below are re-exported, so ``from dataset import build_dataset`` works.
"""

from dataset.catalog import (
                             DATASETS,
                             DataSpec,
                             augmentation_kind,
                             build_dataset,
                             class_balanced_subset,
                             class_names,
                             load_split,
                             patch_spec,
                             unwrap_subsets,
)
from dataset.patch_sources import AUGMENTS, EvaluationPatches, PatchRecipe, TrainingPatches
from dataset.pil_pipeline import MultiPatch, patch_transform
from dataset.synthetic import SyntheticShapes

__all__ = [
    "AUGMENTS",
    "DATASETS",
    "DataSpec",
    "EvaluationPatches",
    "MultiPatch",
    "PatchRecipe",
    "SyntheticShapes",
    "TrainingPatches",
    "augmentation_kind",
    "build_dataset",
    "class_balanced_subset",
    "class_names",
    "load_split",
    "patch_spec",
    "patch_transform",
    "unwrap_subsets",
]
