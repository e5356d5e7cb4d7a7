"""The seeded, resumable, rank-aware image order."""
import torch
from torch.utils.data import TensorDataset

from dataset.sampler import ResumableSampler
from dataset.seeding import SeededPatches


def batches(sampler: ResumableSampler) -> list[list[int]]:
    flat = [index for _, index in sampler]
    return [flat[i:i + sampler.local_batch] for i in range(0, len(flat), sampler.local_batch)]


class TestResumableSampler:
    def test_epoch_is_a_seeded_permutation_without_the_last_partial_batch(self) -> None:
        sampler = ResumableSampler(23, global_batch=5, seed=3)
        order = batches(sampler)
        flat = sum(order, [])
        assert len(flat) == len(sampler) == 20 and len(set(flat)) == 20
        assert order == batches(ResumableSampler(23, global_batch=5, seed=3))
        assert order != batches(ResumableSampler(23, global_batch=5, seed=4))
        sampler.set_epoch(1)
        assert batches(sampler) != order
        assert {epoch for epoch, _ in sampler} == {1}

    def test_resuming_skips_exactly_the_steps_done(self) -> None:
        full = ResumableSampler(40, global_batch=8, seed=0)
        full.set_epoch(2)
        resumed = ResumableSampler(40, global_batch=8, seed=0)
        resumed.set_epoch(2, start_step=3)
        assert batches(resumed) == batches(full)[3:]
        assert len(resumed) == 2 * 8

    def test_ranks_split_each_global_batch(self) -> None:
        single = ResumableSampler(30, global_batch=6, seed=1)
        ranks = [ResumableSampler(30, global_batch=6, seed=1, rank=r, world_size=3) for r in range(3)]
        per_rank = [batches(r) for r in ranks]
        for step, global_batch in enumerate(batches(single)):
            assert sum((per_rank[r][step] for r in range(3)), []) == global_batch
        assert torch.equal(ranks[1].batch_indices(2), torch.tensor(batches(single)[2][2:4]))


class TestSeededPatches:
    def test_patches_depend_on_seed_epoch_and_index_only(self) -> None:
        images = TensorDataset(torch.zeros(4, 3), torch.arange(4))
        noisy = SeededPatches(images, lambda x: x + torch.rand(3), seed=7)
        first = noisy[(1, 2)][0]
        torch.rand(5)  # the global generator's state does not matter
        assert torch.equal(noisy[(1, 2)][0], first)
        assert not torch.equal(noisy[(0, 2)][0], first) and not torch.equal(noisy[(1, 3)][0], first)
        assert not torch.equal(SeededPatches(images, lambda x: x + torch.rand(3), seed=8)[(1, 2)][0], first)
        assert torch.equal(noisy[2][0], noisy[(0, 2)][0])

    def test_global_generator_is_left_alone(self) -> None:
        noisy = SeededPatches(TensorDataset(torch.zeros(2, 3), torch.arange(2)), lambda x: x + torch.rand(3), 0)
        torch.manual_seed(0)
        expected = torch.rand(2)
        torch.manual_seed(0)
        noisy[(0, 1)]
        assert torch.equal(torch.rand(2), expected)
