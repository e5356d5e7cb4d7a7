"""Probes of a frozen representation: weighted kNN and the official linear probe.

Both take in-memory feature tensors (N, D) with integer labels (N,) and return accuracies in
percent; neither touches images, models or files.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

# The official evaluation protocol: the defaults of evaluate.py's --knn_* and --linear_* flags; the
# training-time kNN monitor uses the kNN pair.
KNN_K = 20  # neighbours of the weighted kNN (solo-learn WeightedKNNClassifier, cosine)
KNN_T = 0.07  # temperature of its exp(cos / T) votes
Labelled = tuple[torch.Tensor, torch.Tensor]  # (features (N, D), integer labels (N,))


@dataclass(frozen=True)
class LinearSettings:
    """The linear probe's optimisation: epochs (cosine-annealed to 0), SGD lr, momentum, weight
    decay wd, batch bs."""

    epochs: int
    lr: float
    momentum: float
    wd: float
    bs: int


OFFICIAL_LINEAR = LinearSettings(epochs=100, lr=0.03, momentum=0.9, wd=5e-5, bs=100)  # EMP-SSL func.linear


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N,): is labels[n] among the k highest scores of row n? scores (N, C), labels (N,).
    k is capped at C, so "top-5" of a 3-class problem is top-3 (always true)."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices  # (N, k)
    return (top == labels[:, None]).any(dim=1)


@torch.no_grad()
def knn_scores(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
               num_classes: int, k: int, temperature: float, chunk: int = 1024) -> torch.Tensor:
    """Class scores (M, C) of the weighted cosine kNN classifier for M test features.

    With unit rows u (train, N×D) and v (test, M×D) and s = v·uᵀ, each test row takes its k most
    similar training rows (k capped at N) and gives class c the score Σ_{j ∈ top-k, y_j = c}
    exp(s_j / T) (official `WeightedKNNClassifier`, cosine). Test rows are processed `chunk` at a
    time, so memory is chunk × N similarities whatever M is; the result does not depend on chunk.
    """
    train = F.normalize(train_features.float(), dim=1)  # (N, D)
    test = F.normalize(test_features.float(), dim=1)  # (M, D)
    k = min(k, train.shape[0])
    scores = []
    for queries in test.split(chunk):  # (m, D) each
        sims, idx = (queries @ train.T).topk(k, dim=1)  # (m, k)
        votes = torch.zeros(queries.shape[0], num_classes, device=test.device)  # (m, C)
        scores.append(votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp()))
    return torch.cat(scores)  # (M, C)


def knn_accuracy(train: Labelled, test: Labelled, num_classes: int, k: int, temperature: float,
                 chunk: int = 1024) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of :func:`knn_scores` on the test set."""
    scores = knn_scores(*train, test[0], num_classes, k, temperature, chunk)
    return {f"top{t}": 100.0 * topk_correct(scores, test[1], t).float().mean().item() for t in (1, 5)}


@torch.no_grad()
def evaluate_linear(classifier: nn.Module, features: torch.Tensor, labels: torch.Tensor,
                    bs: int = 1000) -> dict[str, float]:
    """Top-1 and top-5 accuracy (percent) of a classifier on features (N, D), labels (N,)."""
    correct = {1: 0, 5: 0}
    for x, y in zip(features.split(bs), labels.split(bs)):  # (b, D), (b,)
        logits = classifier(x)  # (b, C)
        for t in correct:
            correct[t] += int(topk_correct(logits, y, t).sum())
    return {f"top{t}": 100.0 * n / len(labels) for t, n in correct.items()}


def linear_probe(train: Labelled, test: Labelled, num_classes: int, settings: LinearSettings, seed: int = 0,
                 progress: bool = False) -> dict:
    """Train Linear(D, C) on frozen features with the official protocol; test after every epoch.

    Official `func.linear`: cross-entropy, SGD (lr, momentum, weight decay wd), batch bs drawn
    from a fresh shuffle every epoch with the incomplete last batch dropped, learning rate
    cosine-annealed to 0 over the epochs (stepped once per epoch). Runs on the device of the
    features, on in-memory tensors. Returns the final epoch's {"top1", "top5"} (the result), the
    best top-1 over the test epochs (official reporting, selected on the test set) and the
    per-epoch test top-1 history and the per-epoch mean training loss history (the mean of the
    epoch's batch cross-entropies, each batch weighing the same, as it was before that batch's update).
    """
    (train_features, train_labels), (test_features, test_labels) = train, test
    epochs, lr, momentum, wd, bs = settings.epochs, settings.lr, settings.momentum, settings.wd, settings.bs
    device = train_features.device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        classifier = nn.Linear(train_features.shape[1], num_classes).to(device)
    optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    steps = max(1, len(train_labels) // bs)
    history, history_loss = [], []
    bar = tqdm(range(epochs), desc="linear probe", disable=not progress, leave=False, dynamic_ncols=True)
    for _ in bar:
        order = torch.randperm(len(train_labels), generator=generator, device=device)
        classifier.train()
        loss_sum = torch.zeros((), device=device)
        for idx in order[: steps * bs].view(steps, -1):  # (steps, bs); a short last batch is dropped
            loss = F.cross_entropy(classifier(train_features[idx]), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        scheduler.step()
        history_loss.append(loss_sum.item() / steps)  # one host read per epoch
        classifier.eval()
        result = evaluate_linear(classifier, test_features, test_labels)
        history.append(result["top1"])
        bar.set_postfix(test_top1=f"{result['top1']:.2f}", refresh=False)
    return {**result, "best_top1_over_test_epochs": max(history), "history_top1": history,
            "history_loss": history_loss}
