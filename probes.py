"""Probes of a frozen representation: weighted kNN and the official linear probe.

Both take in-memory feature tensors (N, D) with integer labels (N,) and return accuracies in
percent; neither touches images, models or files.
"""
from __future__ import annotations

import math
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


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of (0-based) `epoch` under cosine annealing to 0 over `epochs`, stepped
    once per epoch: lr · (1 + cos(π · epoch / epochs)) / 2 (CosineAnnealingLR(T_max=epochs) in
    closed form)."""
    return lr * (1 + math.cos(math.pi * epoch / epochs)) / 2


def linear_correct(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                   bs: int = 1000) -> torch.Tensor:
    """(2,) int64 on the device: how many rows of features (N, D) have their label (N,) among the
    top-1 and the top-5 classes of x Wᵀ + b, for W (C, D) and b (C,). No host read."""
    counts = [torch.stack([topk_correct(torch.addmm(bias, x, weight.T), y, t).sum() for t in (1, 5)])  # (2,)
              for x, y in zip(features.split(bs), labels.split(bs))]  # (b, D), (b,)
    return torch.stack(counts).sum(0)  # (2,)


@dataclass
class FlatLinear:
    """A linear classifier Linear(D, C) as one flat float32 vector θ = [W (C, D) row-major | b (C,)],
    with its SGD momentum v and a gradient buffer g of the same (C·D + C,) shape."""

    theta: torch.Tensor
    velocity: torch.Tensor
    grad: torch.Tensor
    num_classes: int

    @classmethod
    def of(cls, layer: nn.Linear, device: torch.device) -> FlatLinear:
        """layer's weights, with a zero momentum (torch.optim.SGD's first step: v = g)."""
        theta = torch.cat([layer.weight.detach().flatten(), layer.bias.detach()]).to(device)  # (C·D + C,)
        return cls(theta, torch.zeros_like(theta), torch.empty_like(theta), layer.out_features)

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of a flat vector as (W (C, D), b (C,))."""
        c = self.num_classes
        return flat[:-c].view(c, -1), flat[-c:]


def sgd_epoch(linear: FlatLinear, features: torch.Tensor, batches: torch.Tensor, targets: torch.Tensor, lr: float,
              settings: LinearSettings) -> torch.Tensor:
    """One epoch of SGD on the softmax cross-entropy of a linear classifier, each step written out
    as torch.optim.SGD (momentum m, weight decay wd, no dampening, no Nesterov) takes it after
    autograd's backward, in a few fused tensor operations and without a host read.

    linear's θ and v are updated in place (g is scratch). features (N, D); batches (steps, n)
    indices into them; targets (steps, n, C) the one-hot labels of those rows. For each batch
    x (n, D), y (n, C):

        log p = log_softmax(x Wᵀ + b)            loss = −(1/n) Σ y ⊙ log p
        ∂loss/∂logits = (p − y) / n
        g_W = (p − y)ᵀ x / n + wd · W            g_b = (p − y)ᵀ 1 / n + wd · b
        v ← m · v + g                            θ ← θ − lr · v

    (v starts at 0, so v = g at the first step, as torch.optim.SGD's buffer.) Returns the sum of
    the batch losses, each taken before its batch's update: a 0-d tensor on the device.
    """
    n = batches.shape[1]
    weight, bias = linear.split(linear.theta)  # (C, D), (C,)
    grad_weight, grad_bias = linear.split(linear.grad)  # (C, D), (C,)
    ones = features.new_ones(n)  # (n,)
    log_likelihood = features.new_zeros(n, linear.num_classes)  # Σ over the steps of y ⊙ log p
    for index, y in zip(batches, targets):  # (n,), (n, C)
        x = features.index_select(0, index)  # (n, D)
        log_p = torch.addmm(bias, x, weight.T).log_softmax(1)  # (n, C)
        log_likelihood.addcmul_(y, log_p)
        error = log_p.exp().sub_(y)  # (n, C) p − y
        torch.addmm(weight, error.T, x, beta=settings.wd, alpha=1 / n, out=grad_weight)
        torch.addmv(bias, error.T, ones, beta=settings.wd, alpha=1 / n, out=grad_bias)
        linear.velocity.mul_(settings.momentum).add_(linear.grad)
        linear.theta.add_(linear.velocity, alpha=-lr)
    return log_likelihood.sum().neg() / n


@torch.no_grad()
def linear_probe(train: Labelled, test: Labelled, num_classes: int, settings: LinearSettings, seed: int = 0,
                 progress: bool = False) -> dict:
    """Train Linear(D, C) on frozen features with the official protocol; test after every epoch.

    Official `func.linear`: cross-entropy, SGD (lr, momentum, weight decay wd on weight and bias),
    batch bs drawn from a fresh shuffle every epoch with the incomplete last batch dropped,
    learning rate cosine-annealed to 0 over the epochs (stepped once per epoch). The classifier
    starts as nn.Linear's seeded initialisation; the steps are :func:`sgd_epoch`'s, equal to
    torch.optim.SGD with autograd to float rounding, with one host read per epoch. Runs on the
    device of the features, on in-memory tensors. Returns the final epoch's {"top1", "top5"}
    (the result), the best top-1 over the test epochs (official reporting, selected on the test
    set) and the per-epoch test top-1 history and the per-epoch mean training loss history (the
    mean of the epoch's batch cross-entropies, each batch weighing the same, as it was before
    that batch's update).
    """
    (train_features, train_labels), (test_features, test_labels) = train, test
    device = train_features.device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        initial = nn.Linear(train_features.shape[1], num_classes)
    linear = FlatLinear.of(initial, device)
    weight, bias = linear.split(linear.theta)  # (C, D), (C,)
    onehot = F.one_hot(train_labels, num_classes).float()  # (N, C)
    steps = max(1, len(train_labels) // settings.bs)
    history, history_loss = [], []
    bar = tqdm(range(settings.epochs), desc="linear probe", disable=not progress, leave=False, dynamic_ncols=True)
    for epoch in bar:
        order = torch.randperm(len(train_labels), generator=generator, device=device)
        batches = order[: steps * settings.bs].view(steps, -1)  # (steps, bs); a short last batch is dropped
        lr = cosine_lr(settings.lr, epoch, settings.epochs)
        loss_sum = sgd_epoch(linear, train_features, batches, onehot[batches], lr, settings)
        correct = linear_correct(weight, bias, test_features, test_labels)  # (2,)
        loss, top1, top5 = torch.cat([loss_sum.double().view(1), correct.double()]).tolist()  # one host read
        result = {"top1": 100.0 * top1 / len(test_labels), "top5": 100.0 * top5 / len(test_labels)}
        history_loss.append(loss / steps)
        history.append(result["top1"])
        bar.set_postfix(test_top1=f"{result['top1']:.2f}", refresh=False)
    return {**result, "best_top1_over_test_epochs": max(history), "history_top1": history,
            "history_loss": history_loss}
