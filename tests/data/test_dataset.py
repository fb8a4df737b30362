import pytest
import torch

from bayesprune.data import Dataset, Split


def make(n: int = 10, n_val: int = 3) -> Dataset:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
    y = torch.arange(n) % 2
    val = Split(torch.zeros(n_val, 3), torch.zeros(n_val, dtype=torch.long)) if n_val else None
    return Dataset(train=Split(x, y), val=val, n_classes=2, name="toy")


def test_split_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="4 rows but y has 3"):
        Split(torch.zeros(4, 2), torch.zeros(3))


def test_properties():
    ds = make()
    assert ds.n_train == 10
    assert len(ds.val) == 3
    assert ds.input_shape == (3,)
    assert ds.device == torch.device("cpu")


@pytest.mark.parametrize("name", ["test", "name", "nope"])
def test_split_lookup_rejects_missing_or_non_split(name):
    with pytest.raises(ValueError, match=repr(name)):
        make().split(name)


@pytest.mark.parametrize(
    ("n", "bs", "expected"), [(10, 4, 3), (10, 5, 2), (10, 10, 1), (10, 11, 1)]
)
def test_num_batches(n, bs, expected):
    assert make(n).num_batches(bs) == expected


def test_permutation_is_pure_function_of_seed_and_epoch():
    ds = make(50)
    assert torch.equal(ds.permutation(3, 7), ds.permutation(3, 7))
    assert not torch.equal(ds.permutation(3, 7), ds.permutation(4, 7))
    assert not torch.equal(ds.permutation(3, 7), ds.permutation(3, 8))


@pytest.mark.parametrize("bs", [1, 3, 4, 10, 32])
def test_batches_cover_every_example_once(bs):
    ds = make(10)
    seen = torch.cat([x[:, 0] for x, _ in ds.batches(bs, epoch=2, seed=1)])
    assert sorted(seen.tolist()) == list(range(10))
    assert all(len(y) <= bs for _, y in ds.batches(bs))


def test_batches_keep_x_and_y_aligned():
    ds = make(10)
    for x, y in ds.batches(3, epoch=1, seed=5):
        assert torch.equal(x[:, 0].long() % 2, y)


@pytest.mark.parametrize("shuffle", [True, False])
def test_start_resumes_mid_epoch(shuffle):
    ds = make(10)
    full = list(ds.batches(3, epoch=4, seed=2, shuffle=shuffle))
    tail = list(ds.batches(3, epoch=4, seed=2, shuffle=shuffle, start=2))
    assert len(tail) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], tail, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_unshuffled_batches_are_in_order():
    ds = make(7)
    xs = torch.cat([x[:, 0] for x, _ in ds.batches(3, shuffle=False)])
    assert xs.tolist() == list(range(7))


def test_val_split_batches():
    ds = make(10, n_val=5)
    assert [len(y) for _, y in ds.batches(2, split="val")] == [2, 2, 1]


@pytest.mark.parametrize("bs", [0, -1])
def test_rejects_bad_batch_size(bs):
    with pytest.raises(ValueError, match="batch_size"):
        next(make().batches(bs))


def test_to_keeps_missing_splits_missing():
    ds = make(n_val=0).to("cpu")
    assert ds.val is None and ds.test is None
    assert ds.name == "toy" and ds.n_classes == 2
