"""The probes on tensors: weighted kNN and the linear probe."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import clusters

import probes
from probes import KNN_K, KNN_T, OFFICIAL_LINEAR, LinearSettings, knn_accuracy, knn_scores, linear_probe, topk_correct
from scripts.benchmark_eval import reference_linear_probe


class TestKNN:
    def test_separated_clusters_are_classified_perfectly(self) -> None:
        train, test = clusters(500), clusters(200, seed=1)
        acc = knn_accuracy(train, test, 10, KNN_K, KNN_T)
        assert acc["top1"] == 100.0 and acc["top5"] == 100.0

    def test_random_labels_give_about_chance_and_top5_at_least_top1(self) -> None:
        g = torch.Generator().manual_seed(0)
        train_x, test_x = torch.randn(2000, 32, generator=g), torch.randn(1000, 32, generator=g)
        train_y, test_y = torch.randint(10, (2000,), generator=g), torch.randint(10, (1000,), generator=g)
        acc = knn_accuracy((train_x, train_y), (test_x, test_y), 10, KNN_K, KNN_T)
        assert 5.0 < acc["top1"] < 15.0  # chance is 10%; the standard error is about 1%
        assert 40.0 < acc["top5"] < 60.0 and acc["top5"] >= acc["top1"]

    def test_votes_are_weighted_by_exp_cosine_over_t_among_the_k_nearest(self) -> None:
        # The query is [1, 0]. Neighbours: one of class 1 at cos 1, two of class 0 at cos 0.8,
        # and three of class 2 at cos 0.6 that only a k > 3 would reach.
        train = torch.tensor([[c, math.sqrt(1 - c * c)] for c in (1.0, 0.8, 0.8, 0.6, 0.6, 0.6)])
        labels = torch.tensor([1, 0, 0, 2, 2, 2])
        scores = knn_scores(train, labels, torch.tensor([[2.0, 0.0]]), num_classes=3, k=3, temperature=0.07)
        expected = torch.tensor([[2 * math.exp(0.8 / 0.07), math.exp(1 / 0.07), 0.0]])
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=0)
        assert scores.argmax() == 1  # a majority vote would say 0
        hot = knn_scores(train, labels, torch.tensor([[1.0, 0.0]]), num_classes=3, k=3, temperature=1.0)
        assert hot.argmax() == 0  # at T = 1 the two class-0 neighbours outweigh the closer one

    def test_chunk_size_does_not_change_the_result(self) -> None:
        g = torch.Generator().manual_seed(3)
        train_x, test_x = torch.randn(300, 16, generator=g), torch.randn(77, 16, generator=g)
        train_y, test_y = torch.randint(5, (300,), generator=g), torch.randint(5, (77,), generator=g)
        reference = knn_scores(train_x, train_y, test_x, 5, 20, 0.07, chunk=1000)
        accuracies = set()
        for chunk in (1, 7, 76, 77):
            scores = knn_scores(train_x, train_y, test_x, 5, 20, 0.07, chunk=chunk)
            torch.testing.assert_close(scores, reference, rtol=1e-5, atol=0)  # exp(cos/T) is up to e^14
            accuracies.add(tuple(knn_accuracy((train_x, train_y), (test_x, test_y), 5, KNN_K, KNN_T, chunk).values()))
        assert len(accuracies) == 1

    def test_topk_is_capped_at_the_number_of_classes(self) -> None:
        scores = torch.tensor([[0.1, 0.5, 0.2], [0.9, 0.0, 0.1]])
        assert topk_correct(scores, torch.tensor([2, 1]), 1).tolist() == [False, False]
        assert topk_correct(scores, torch.tensor([2, 1]), 2).tolist() == [True, False]
        assert topk_correct(scores, torch.tensor([2, 1]), 5).tolist() == [True, True]


class TestLinearProbe:
    def test_separable_features_are_learned_and_the_result_is_the_final_epoch(self) -> None:
        train, test = clusters(1000, dim=64, noise=0.2), clusters(300, dim=64, noise=0.2, seed=1)
        out = linear_probe(train, test, 10, replace(OFFICIAL_LINEAR, epochs=10))
        assert out["top1"] > 95.0 and out["top5"] >= out["top1"]
        assert out["top1"] == out["history_top1"][-1] and len(out["history_top1"]) == 10
        assert out["best_top1_over_test_epochs"] == max(out["history_top1"])

    def test_reproducible_and_fewer_images_than_a_batch(self) -> None:
        train, test = clusters(50, dim=8, noise=0.3), clusters(40, dim=8, noise=0.3, seed=1)
        first = linear_probe(train, test, 10, replace(OFFICIAL_LINEAR, epochs=3, bs=100), seed=5)
        assert first == linear_probe(train, test, 10, replace(OFFICIAL_LINEAR, epochs=3, bs=100), seed=5)

    @pytest.mark.parametrize("epochs", [1, 4])
    def test_the_learning_rate_is_torchs_cosine_annealing_to_zero_stepped_per_epoch(self, epochs: int) -> None:
        """probes.cosine_lr against CosineAnnealingLR(T_max=epochs); that linear_probe follows it is
        the parity test below (its reference steps the scheduler)."""
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        torch_lrs = []
        for _ in range(epochs):
            torch_lrs.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        ours = [probes.cosine_lr(0.4, epoch, epochs) for epoch in range(epochs)]
        assert ours == pytest.approx(torch_lrs, rel=1e-12)
        assert ours[0] == 0.4 and (epochs == 1 or ours[-1] < 0.1)

    def test_an_sgd_epoch_takes_torch_optim_sgds_steps_on_its_batches(self) -> None:
        """probes.sgd_epoch on two batches equals torch.optim.SGD (momentum, weight decay) after
        autograd's backward of each batch's cross-entropy, and returns the sum of the batch losses,
        each before its batch's update."""
        features, labels = clusters(250, num_classes=5, dim=12, noise=1.0)  # (N, D), (N,)
        settings = LinearSettings(epochs=1, lr=0.5, momentum=0.9, wd=0.01, bs=100)
        batches = torch.randperm(250, generator=torch.Generator().manual_seed(0))[:200].view(2, 100)  # (steps, bs)
        torch.manual_seed(0)
        layer = nn.Linear(12, 5)
        linear = probes.FlatLinear.of(layer, torch.device("cpu"))  # a copy of layer's weights
        loss_sum = probes.sgd_epoch(linear=linear, features=features, batches=batches,
                                    targets=F.one_hot(labels, 5).float()[batches], lr=0.5, settings=settings)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
        losses = []
        for index in batches:
            loss = F.cross_entropy(layer(features[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        weight, bias = linear.split(linear.theta)  # (C, D), (C,)
        torch.testing.assert_close(weight, layer.weight.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bias, layer.bias.detach(), rtol=1e-5, atol=1e-6)
        assert loss_sum.item() == pytest.approx(sum(losses), rel=1e-5)
        assert losses[1] < losses[0]  # the first step moved the classifier: the parity is not vacuous

    @pytest.mark.parametrize("n", [350, 60])  # a short last batch dropped; a single batch shorter than bs
    def test_fused_steps_equal_torch_optim_sgd_with_autograd(self, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
        """Weights after every epoch, test accuracies and losses of probes.linear_probe equal the
        plain formulation (scripts/benchmark_eval.reference_linear_probe); lr and wd are large so
        that a wrong momentum, decay or schedule shows beyond float rounding."""
        train = clusters(n, num_classes=5, dim=12, noise=1.0)
        test = clusters(80, num_classes=5, dim=12, noise=1.0, seed=1)
        settings = LinearSettings(epochs=4, lr=0.5, momentum=0.9, wd=0.01, bs=100)
        fused_weights, reference_weights = [], []
        linear_correct, scheduler_step = probes.linear_correct, torch.optim.lr_scheduler.CosineAnnealingLR.step

        def keep_fused(weight: torch.Tensor, bias: torch.Tensor, *args) -> torch.Tensor:  # after each epoch
            fused_weights.append(torch.cat([weight, bias[:, None]], 1).clone())  # (C, D + 1)
            return linear_correct(weight, bias, *args)

        def keep_reference(scheduler, *args) -> None:  # at the start, then after each epoch
            weight, bias = scheduler.optimizer.param_groups[0]["params"]
            reference_weights.append(torch.cat([weight, bias[:, None]], 1).detach().clone())  # (C, D + 1)
            scheduler_step(scheduler, *args)

        monkeypatch.setattr(probes, "linear_correct", keep_fused)
        monkeypatch.setattr(torch.optim.lr_scheduler.CosineAnnealingLR, "step", keep_reference)
        fused = linear_probe(train, test, 5, settings, seed=3)
        reference = reference_linear_probe(train, test, 5, settings, seed=3)
        assert len(fused_weights) == 4 and len(reference_weights) == 5
        torch.testing.assert_close(torch.stack(fused_weights), torch.stack(reference_weights[1:]), rtol=1e-5,
                                   atol=1e-6)  # (epochs, C, D + 1)
        assert fused["history_loss"] == pytest.approx(reference["history_loss"], rel=1e-5)
        assert fused == {**reference, "history_loss": fused["history_loss"]}  # accuracies: exactly
        assert fused["history_loss"][-1] < 0.9 * fused["history_loss"][0]  # it learns: the parity is not vacuous
