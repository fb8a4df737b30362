"""Batch sources: in-memory shards per process, and loader batches."""

from __future__ import annotations

import pytest
import torch

from bayesprune.data import Dataset, Split
from bayesprune.data.batches import LoaderBatches, TensorBatches, is_loader


def split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))


def test_one_process_gives_the_datasets_permutation():
    s = split(10)
    ours = [y.tolist() for _, y in TensorBatches(s, 4).epoch(3, seed=5)]
    theirs = [y.tolist() for _, y in Dataset(train=s).batches(4, epoch=3, seed=5)]
    assert ours == theirs


@pytest.mark.parametrize(("n", "world"), [(16, 2), (15, 2), (13, 4), (12, 3)])
def test_processes_split_each_global_batch_evenly(n, world):
    shards = [list(TensorBatches(split(n), 4 * world, rank=r, world=world).epoch(1, seed=0))
              for r in range(world)]  # fmt: skip
    src = TensorBatches(split(n), 4 * world, world=world)
    assert {len(s) for s in shards} == {len(src)}
    seen = []
    for step in zip(*shards, strict=True):
        assert len({len(y) for _, y in step}) == 1  # equal shares: the gradient mean is exact
        seen += [int(v) for _, y in step for v in y]
    assert len(seen) == len(set(seen)) == n - src.dropped
    assert src.dropped == (n % (4 * world)) % world < world


def test_a_global_batch_the_processes_cannot_share_is_named():
    with pytest.raises(ValueError, match="batch_size=30 is the global batch .* divisible by .* 4"):
        TensorBatches(split(64), 30, world=4)
    with pytest.raises(ValueError, match="3 training examples cannot be shared by 4 processes"):
        TensorBatches(split(3), 4, world=4)


def test_resume_starts_at_the_given_batch():
    src = TensorBatches(split(20), 6)
    whole = [y.tolist() for _, y in src.epoch(2, seed=1)]
    assert [y.tolist() for _, y in src.epoch(2, seed=1, start=2)] == whole[2:]


def test_what_counts_as_a_loader():
    from torch.utils.data import DataLoader, TensorDataset

    assert is_loader(DataLoader(TensorDataset(torch.zeros(2, 1)), batch_size=1))
    assert is_loader([(torch.zeros(2, 1), torch.zeros(2))] * 3)  # a list of batches
    assert not is_loader([torch.zeros(2, 1), torch.zeros(2)])  # an (x, y) pair
    assert not is_loader((torch.zeros(2), torch.zeros(2)))
    assert not is_loader(iter([1, 2]))
    assert not is_loader(Dataset(train=split(2)))
    with pytest.raises(ValueError, match="n_data must be a positive integer"):
        LoaderBatches([(torch.zeros(1), torch.zeros(1))], n_data=0)
