"""The parts of a training run, built from main.py's flags: one place to change the method.

main.py, scripts/benchmark.py and scripts/gpu_check.py all build the encoder, the objective, the
optimiser, the learning-rate schedule and the training patches here, from an ``args`` namespace
of main.py's parser (``main.get_args_parser().parse_args([...])`` gives the official defaults),
so a forker who changes one of them benchmarks and GPU-checks what they train.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn

from dataset import DataSpec, EvaluationPatches, PatchRecipe, TrainingPatches, class_names, load_split, patch_spec
from dataset.sampler import ResumableSampler
from dataset.seeding import eval_seed
from features import KNNMonitor
from loss import LOSSES
from model import Encoder
from optim import OPTIMIZERS, param_groups, state_copies
from plumbing import distributed
from plumbing.errors import UserError
from plumbing.memory_plan import MemoryPlan, plan_memory
from plumbing.preemption import leave_signals_to_parent
from plumbing.speed import AMP_DTYPES, memory_format, prepare_model


def build_encoder(args: argparse.Namespace, device: torch.device) -> Encoder:
    """The encoder of --arch, --hidden_dim and --z_dim on the device, in --channels_last layout
    if asked; its weights drawn from torch's global generator (seed it first)."""
    encoder = Encoder(args.arch, args.hidden_dim, args.z_dim).to(device)
    prepare_model(encoder, device, args.channels_last)
    return encoder


def build_criterion(args: argparse.Namespace) -> nn.Module:
    """The objective of --loss (loss.LOSSES), from its flags: criterion(z (P, B, d), z_global (P, W·B, d))
    → (loss, {name: detached value})."""
    return LOSSES[args.loss].make(args)


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """The --optimizer of the model's parameters (optim.OPTIMIZERS; official: LARS-wrapped SGD), at
    --lr, --lars_eta where it has a trust ratio. Every optimiser gets the same two groups: ≥2-d
    weights decay by --wd, biases and normalisation weights (1-d) do not decay."""
    return OPTIMIZERS[args.optimizer].make(param_groups(model, weight_decay=args.wd), args)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine annealing of the learning rate to 0 over every step of the run (stepped once a step)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=0)


def run_patches(args: argparse.Namespace) -> DataSpec:
    """The run's patch kind and size: --patch_kind and --patch_size (main.py sets them to the run's
    values before anything is built), or where unset, from --data (dataset.catalog.patch_spec)."""
    return patch_spec(args.data, args.data_dir, args.patch_kind, args.patch_size)


def training_patches(args: argparse.Namespace, device: torch.device) -> TrainingPatches:
    """This process's patches at every step: (P·B/W, C, H, W) on the device, made by --augment from
    crops of --crop_scale of the image's area, in the seeded, resumable order of a ResumableSampler
    split over the ranks. Only rank 0 downloads."""
    dataset = load_split(args.data, args.data_dir, "train", args.train_subset,
                         download=args.download and distributed.is_main(), skip_bad_images=args.skip_bad_images)
    if args.train_subset is not None and len(dataset) < args.train_subset:
        raise UserError(f"--train_subset {args.train_subset} is more than the {len(dataset)} training images: "
                        f"lower it")
    sampler = ResumableSampler(len(dataset), args.bs, seed=args.seed, rank=distributed.get_rank(),
                               world_size=distributed.get_world_size())
    recipe = PatchRecipe.of(run_patches(args), args.augment, args.num_patches, args.seed, args.crop_scale)
    layout = memory_format(args.channels_last)
    return TrainingPatches(dataset, recipe, sampler, args.workers, device, layout, leave_signals_to_parent)


def patch_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """(C, S, S): the shape of one training patch of the run (run_patches)."""
    size = run_patches(args).size
    return 3, size, size


def build_monitor(args: argparse.Namespace, device: torch.device) -> KNNMonitor:
    """The --eval_every kNN: --eval_patches patches per image of each split (or of a class-balanced
    --eval_subset), made by the run's --augment path and --crop_scale on the device, in the run's
    precision."""
    batches, num_classes, patches = {}, 0, run_patches(args)
    for split in ("train", "test"):
        dataset = load_split(args.data, args.data_dir, split, args.eval_subset, args.download, flag="--eval_subset")
        recipe = PatchRecipe.of(patches, args.augment, args.eval_patches, eval_seed(args.seed, split), args.crop_scale)
        batches[split] = EvaluationPatches(dataset, recipe, args.bs, args.workers, device, leave_signals_to_parent)
        num_classes = len(class_names(dataset))
    return KNNMonitor(batches, num_classes, args.eval_patches, device, AMP_DTYPES[args.precision])


def step_memory_plan(args: argparse.Namespace, encoder: Encoder, device: torch.device, images: int) -> MemoryPlan:
    """The memory plan of a step of --num_patches patches of `images` images (plumbing/memory_plan.py),
    measured on a random slice of the real shape in --precision and --channels_last, with the
    weight-sized state tensors that --optimizer keeps (optim.state_copies: momentum 1, AdamW's 2)."""
    sample = torch.randn(images, *patch_shape(args), device=device)  # (B, 3, S, S)
    copies = state_copies(lambda module: build_optimizer(module, args))
    return plan_memory(encoder, copies, sample.contiguous(memory_format=memory_format(args.channels_last)),
                       args.num_patches, AMP_DTYPES[args.precision])
