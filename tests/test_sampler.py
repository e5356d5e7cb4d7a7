"""The seeded, resumable, rank-aware image order."""
import torch

from dataset.sampler import ResumableSampler


def batches(sampler: ResumableSampler) -> list[list[int]]:
    flat = list(sampler)
    return [flat[i:i + sampler.local_batch] for i in range(0, len(flat), sampler.local_batch)]


class TestResumableSampler:
    def test_epoch_is_a_seeded_permutation_without_the_last_partial_batch(self) -> None:
        sampler = ResumableSampler(23, global_batch=5, seed=3)
        order = list(sampler)
        assert len(order) == len(sampler) == 20 and len(set(order)) == 20
        assert order == list(ResumableSampler(23, global_batch=5, seed=3))
        assert order != list(ResumableSampler(23, global_batch=5, seed=4))
        sampler.set_epoch(1)
        assert list(sampler) != order

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
