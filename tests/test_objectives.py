"""--loss: the table of objectives, VICReg's against the published formula, and main.py runs with it."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, assert_one_line_error
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main
from build import build_criterion
from engine import NonFiniteGuard, train_step
from loss import LOSSES, EMPSSLLoss, VICRegLoss, pair_mse
from model import Encoder

COEFFS = (25.0, 25.0, 1.0)  # the published sim, std and cov coefficients


def published_vicreg(x: torch.Tensor, y: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor,
                     sim: float, std: float, cov: float) -> tuple[torch.Tensor, ...]:
    """VICReg's loss of two views as the paper and its code define it, in float64: x, y (B, d) this
    rank's embeddings, x_all, y_all (N, d) the batch gathered from every rank. Returns (loss,
    invariance, variance, covariance)."""
    x, y, x_all, y_all = (t.double() for t in (x, y, x_all, y_all))
    invariance = ((x - y) ** 2).mean()  # mse over the local batch
    d = x.shape[1]

    def hinge(v: torch.Tensor) -> torch.Tensor:  # mean_k relu(1 − sqrt(var_k + 1e-4)), var unbiased
        return torch.clamp(1 - torch.sqrt(torch.var(v, dim=0, correction=1) + 1e-4), min=0).mean()

    def off_diagonal_squares(v: torch.Tensor) -> torch.Tensor:  # Σ_{k≠l} cov_kl² / d, cov over the N rows
        c = torch.cov(v.T, correction=1)  # (d, d)
        return (c.pow(2).sum() - c.diagonal().pow(2).sum()) / d

    variance = hinge(x_all) / 2 + hinge(y_all) / 2
    covariance = off_diagonal_squares(x_all) + off_diagonal_squares(y_all)  # a sum over the views
    return sim * invariance + std * variance + cov * covariance, invariance, variance, covariance


def embeddings(p: int, n: int, d: int, seed: int = 0) -> torch.Tensor:
    """(p, n, d) float64 rows whose dimensions have standard deviations from 0.3 to 2, so the
    variance hinge is active on some and not on others, plus a shared part that correlates them."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.3, 2.0, d, dtype=torch.float64)
    shared = torch.randn(p, n, 1, generator=g, dtype=torch.float64)
    return torch.randn(p, n, d, generator=g, dtype=torch.float64) * spread + 0.5 * shared + 1.0


class TestVICReg:
    def test_two_patches_equal_the_published_loss_over_two_ranks(self) -> None:
        """P = 2 is the published VICReg: the invariance over this rank's 6 images, the variance and
        covariance over the 12 gathered from both ranks (rank 1's block first here), value and gradient."""
        z_global = embeddings(2, 12, 8).requires_grad_()  # (P, N, d)
        z = z_global[:, 6:]  # (P, B, d): this rank's block
        loss, parts = VICRegLoss(*COEFFS)(z, z_global)
        want = published_vicreg(z[0], z[1], z_global[0], z_global[1], *COEFFS)
        for got, expected in zip((loss, parts["invariance"], parts["variance"], parts["covariance"]), want):
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-12)
        assert 0 < parts["variance"] < 1 and parts["covariance"] > 0.1  # every term is at work
        (grad,) = torch.autograd.grad(loss, z_global)
        (grad_ref,) = torch.autograd.grad(want[0], z_global)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)

    def test_pair_mse_in_o_p_equals_the_mean_over_every_pair(self) -> None:
        z = embeddings(5, 7, 6)
        pairs = [((z[p] - z[q]) ** 2).mean() for p, q in itertools.combinations(range(5), 2)]  # 10 pairs
        torch.testing.assert_close(pair_mse(z), torch.stack(pairs).mean(), rtol=1e-12, atol=0)

    def test_more_patches_average_so_two_agree(self) -> None:
        """Patches (x, y, x, y) against (x, y): the variance and covariance terms are the same (a sum
        over patches would double them), and the invariance is the mean over the 6 pairs, 4 of
        which are (x, y): 2/3 of mse(x, y) (a sum over pairs would give 4×)."""
        two = embeddings(2, 10, 8)
        four = torch.cat([two, two])  # (4, N, d)
        criterion = VICRegLoss(*COEFFS)
        _, parts2 = criterion(two, two)
        _, parts4 = criterion(four, four)
        for name in ("variance", "covariance"):
            torch.testing.assert_close(parts4[name], parts2[name], rtol=1e-12, atol=0)
        torch.testing.assert_close(parts4["invariance"], parts2["invariance"] * 2 / 3, rtol=1e-12, atol=0)

    def test_z_is_used_as_it_is(self) -> None:
        """No normalisation: scaling z scales the invariance by the square of the factor."""
        z = embeddings(3, 10, 8)
        _, parts = VICRegLoss(*COEFFS)(z, z)
        _, scaled = VICRegLoss(*COEFFS)(3 * z, 3 * z)
        torch.testing.assert_close(scaled["invariance"], 9 * parts["invariance"], rtol=1e-12, atol=0)

    def test_float32_under_bf16_autocast(self) -> None:
        z = embeddings(3, 10, 8).bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, parts = VICRegLoss(*COEFFS)(z, z)
        expected, _ = VICRegLoss(*COEFFS)(z.float(), z.float())
        assert loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
        assert torch.equal(loss, expected)

    def test_a_training_step_with_the_guard_and_in_slices(self) -> None:
        """engine.train_step with VICReg: whole and in 2 slices the loss agrees, and a NaN batch is
        skipped by the guard with no update applied."""
        def model() -> Encoder:
            torch.manual_seed(0)
            return Encoder("resnet10-cifar", hidden_dim=32, z_dim=16)

        x = torch.randn(4 * 6, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # (P·B, C, H, W)
        whole, sliced = model(), model()
        stats = train_step(whole, VICRegLoss(*COEFFS), torch.optim.SGD(whole.parameters(), lr=0.01), x, 4)
        assert stats.keys() == {"loss", "invariance", "variance", "covariance"}
        assert torch.isfinite(stats["loss"]) and stats["loss"] > 0
        in_slices = train_step(sliced, VICRegLoss(*COEFFS), torch.optim.SGD(sliced.parameters(), lr=0.01), x, 4,
                               chunks=2)
        assert torch.isfinite(in_slices["loss"]) and not torch.equal(in_slices["loss"], stats["loss"])  # 2 BN groups
        guarded = model()
        before = [p.clone() for p in guarded.parameters()]
        nan = x.clone()
        nan[0, 0, 0, 0] = float("nan")
        skipped = train_step(guarded, VICRegLoss(*COEFFS), torch.optim.SGD(guarded.parameters(), lr=0.01), nan, 4,
                             guard=NonFiniteGuard(1, x.device))
        assert not torch.isfinite(skipped["loss"])
        assert all(torch.equal(a, b) for a, b in zip(guarded.parameters(), before))


class TestTable:
    def test_loss_flags_are_main_flags_filled_for_their_objective_and_run_defining(self) -> None:
        parser = main.get_args_parser()
        (action,) = [a for a in parser._actions if a.dest == "loss"]
        assert tuple(action.choices) == tuple(LOSSES) and action.default == "emp"
        for name, objective in LOSSES.items():
            args = parser.parse_args(["--loss", name])
            assert {flag: getattr(args, flag) for flag in objective.defaults} == objective.defaults
            others = {flag for other in LOSSES.values() for flag in other.defaults} - objective.defaults.keys()
            assert others and all(getattr(args, flag) is None for flag in others)
            assert set(objective.defaults) <= set(main.RUN_DEFINING)
        assert "loss" in main.RUN_DEFINING
        assert LOSSES["emp"].defaults == {"patch_sim": 200.0, "tcr": 1.0, "eps": 0.2}  # the official
        assert LOSSES["vicreg"].defaults == dict(zip(("sim_coeff", "std_coeff", "cov_coeff"), COEFFS))  # published

    def test_build_criterion_builds_the_named_objective_with_its_flags(self) -> None:
        parse = main.get_args_parser().parse_args
        emp = build_criterion(parse(["--patch_sim", "100"]))
        assert isinstance(emp, EMPSSLLoss) and (emp.patch_sim, emp.tcr, emp.eps) == (100.0, 1.0, 0.2)
        vicreg = build_criterion(parse(["--loss", "vicreg", "--cov_coeff", "0.5"]))
        assert isinstance(vicreg, VICRegLoss)
        assert (vicreg.sim_coeff, vicreg.std_coeff, vicreg.cov_coeff) == (25.0, 25.0, 0.5)

    def test_the_default_run_folder_names_the_objective(self) -> None:
        parse = main.get_args_parser().parse_args
        assert main.default_run_dir(parse([])).name == "patchsim200_numpatch100_bs100_lr0.3_NONE"  # the official
        assert main.default_run_dir(parse(["--loss", "vicreg"])).name == "vicreg_numpatch100_bs100_lr0.3_NONE"


def scalars(run: Path) -> set[str]:
    events = EventAccumulator(str(run))
    events.Reload()
    return set(events.Tags()["scalars"])


class TestMain:
    @pytest.fixture
    def train(self, cli, tmp_path: Path):
        """train(*flags): main.py on the tiny configuration into tmp_path/run."""
        return lambda *extra: cli("main", *TINY_RUN, "--output_dir", str(tmp_path / "run"), *extra)

    def test_vicreg_trains_in_slices_with_the_knn_and_records_its_flags(self, train, tmp_path: Path) -> None:
        result = train("--loss", "vicreg", "--epoch", "1", "--patch_chunks", "2", "--eval_every", "1",
                       "--eval_patches", "1", "--eval_subset", "20", "--log_every", "1")
        assert result.returncode == 0, result.stderr
        assert "kNN top-1" in result.stdout
        run = tmp_path / "run"
        assert {"train/invariance", "train/variance", "train/covariance", "train/loss", "eval/knn_top1"} <= scalars(run)
        args = json.loads((run / "args.json").read_text())["args"]
        assert (args["loss"], args["sim_coeff"], args["std_coeff"], args["cov_coeff"]) == ("vicreg", *COEFFS)
        assert args["patch_sim"] is None and args["eps"] is None  # EMP-SSL's flags are not read

    def test_resume_with_another_objective_or_coefficient_is_refused(self, train) -> None:
        assert train("--loss", "vicreg", "--max_steps", "1").returncode == 0
        assert_one_line_error(train("--resume"), "--loss vicreg (now emp)")
        assert_one_line_error(train("--loss", "vicreg", "--sim_coeff", "10", "--resume"), "--sim_coeff 25.0 (now 10.0)")
        assert train("--loss", "vicreg", "--sim_coeff", "25", "--resume", "--max_steps", "2").returncode == 0

    @pytest.mark.parametrize("flags,fragment", [
        (["--sim_coeff", "10"], "--sim_coeff is read by --loss vicreg, not by --loss emp"),
        (["--loss", "vicreg", "--patch_sim", "200"], "--patch_sim is read by --loss emp, not by --loss vicreg"),
        (["--loss", "vicreg", "--eps", "0.2"], "--eps"),
        (["--loss", "barlow"], "--loss"),
    ])
    def test_a_flag_the_objective_does_not_read_is_refused(self, train, tmp_path: Path, flags: list[str],
                                                           fragment: str) -> None:
        assert_one_line_error(train(*flags), fragment)
        assert not (tmp_path / "run").exists()

