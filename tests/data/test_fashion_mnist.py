import importlib
from pathlib import Path

import pytest
import torch

from bayesprune.data import fashion_mnist as load
from bayesprune.data import get_dataset, save_idx

N_TRAIN, N_TEST = 40, 20
# The function bayesprune.data.fashion_mnist shadows its module as a package attribute.
fm = importlib.import_module("bayesprune.data.fashion_mnist")
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def write_fake(directory: Path, *, gz: bool = True, n_train: int = N_TRAIN, n_test: int = N_TEST):
    """A tiny Fashion-MNIST whose images carry their row index in an affine-invariant code.

    Pixels 0 and 1 are 0 and 255 in every image and pixel 2 is the row index, so
    ``255 * (p2 - p0) / (p1 - p0)`` recovers the row after any standardisation.
    """
    directory.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(123)
    suffix = ".gz" if gz else ""
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = torch.randint(0, 256, (n, 28 * 28), generator=g, dtype=torch.uint8)
        x[:, 0], x[:, 1], x[:, 2] = 0, 255, torch.arange(n, dtype=torch.uint8)
        y = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        save_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", x.reshape(n, 28, 28))
        save_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", y)
        data[prefix] = (x, y)
    return data


def rows(x: torch.Tensor) -> list[int]:
    """The raw row index of each (standardised) image, see :func:`write_fake`."""
    p = x.flatten(1)[:, :3].double()
    return (255 * (p[:, 2] - p[:, 0]) / (p[:, 1] - p[:, 0])).round().long().tolist()


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No env var, no system copy, an empty cache: only what a test writes is found."""
    monkeypatch.delenv("BAYESPRUNE_DATA", raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (tmp_path / "system",))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_load_via_root(isolated):
    raw = write_fake(isolated / "fm")
    ds = load(isolated / "fm", val_size=8, download=False)
    assert ds.name == "fashion-mnist" and ds.n_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (N_TRAIN - 8, 8, N_TEST)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.shape[1:] == (1, 28, 28)
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
    # the test split is the whole t10k file, in order
    assert rows(ds.test.x) == list(range(N_TEST))
    assert torch.equal(ds.test.y, raw["t10k"][1].long())


def test_val_is_carved_from_train_and_disjoint(isolated):
    raw = write_fake(isolated / "fm")
    ds = load(isolated / "fm", val_size=10, seed=3, download=False)
    train_rows, val_rows = rows(ds.train.x), rows(ds.val.x)
    assert len(set(val_rows)) == 10
    assert not set(train_rows) & set(val_rows)
    assert sorted(train_rows + val_rows) == list(range(N_TRAIN))
    # labels travel with their images
    y_raw = raw["train"][1].long()
    assert torch.equal(ds.val.y, y_raw[val_rows])
    assert torch.equal(ds.train.y, y_raw[train_rows])


def test_statistics_come_from_training_part_only(isolated):
    raw = write_fake(isolated / "fm")
    ds = load(isolated / "fm", val_size=10, download=False)
    x_raw = raw["train"][0].double() / 255
    part = x_raw[rows(ds.train.x)]
    mean, std = part.mean(), part.std()
    for split, source in ((ds.train, x_raw), (ds.val, x_raw), (ds.test, raw["t10k"][0] / 255)):
        expected = (source[rows(split.x)] - mean) / std
        torch.testing.assert_close(
            split.x.flatten(1).double(), expected.double(), atol=1e-5, rtol=0
        )


def test_training_part_is_standardised(isolated):
    write_fake(isolated / "fm")
    ds = load(isolated / "fm", val_size=10, download=False)
    assert abs(float(ds.train.x.mean())) < 1e-5
    assert float(ds.train.x.std()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_seeded_split_is_deterministic(isolated, seed):
    write_fake(isolated / "fm")
    a = load(isolated / "fm", val_size=10, seed=seed, download=False)
    b = load(isolated / "fm", val_size=10, seed=seed, download=False)
    c = load(isolated / "fm", val_size=10, seed=seed + 10, download=False)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.val.x, c.val.x)


def test_flatten(isolated):
    write_fake(isolated / "fm")
    ds = load(isolated / "fm", val_size=4, flatten=True, download=False)
    assert ds.input_shape == (784,)
    assert ds.test.x.shape == (N_TEST, 784)


def test_no_val_split(isolated):
    write_fake(isolated / "fm")
    ds = load(isolated / "fm", val_size=0, download=False)
    assert ds.val is None and len(ds.train) == N_TRAIN


@pytest.mark.parametrize("val_size", [-1, N_TRAIN, N_TRAIN + 1])
def test_bad_val_size(isolated, val_size):
    write_fake(isolated / "fm")
    with pytest.raises(ValueError, match="val_size"):
        load(isolated / "fm", val_size=val_size, download=False)


def test_plain_uncompressed_files(isolated):
    write_fake(isolated / "fm", gz=False)
    assert len(load(isolated / "fm", val_size=4, download=False).test) == N_TEST


def test_load_via_env_var(isolated, monkeypatch):
    write_fake(isolated / "env")
    monkeypatch.setenv("BAYESPRUNE_DATA", str(isolated / "env"))
    ds = load(val_size=4, download=False)
    assert len(ds.train) == N_TRAIN - 4


def test_root_takes_precedence_over_env(isolated, monkeypatch):
    write_fake(isolated / "root", n_train=30)
    write_fake(isolated / "env", n_train=50)
    monkeypatch.setenv("BAYESPRUNE_DATA", str(isolated / "env"))
    assert len(load(isolated / "root", val_size=0, download=False).train) == 30
    assert len(load(val_size=0, download=False).train) == 50


def test_get_dataset_name(isolated):
    write_fake(isolated / "fm")
    ds = get_dataset("fashion-mnist", root=isolated / "fm", val_size=4, download=False)
    assert ds.name == "fashion-mnist"


def test_missing_data_error_lists_places_and_remedies(isolated):
    with pytest.raises(FileNotFoundError) as info:
        load(isolated / "nowhere", download=False)
    msg = str(info.value)
    for needle in (
        str(isolated / "nowhere"),
        str(isolated / "system"),
        str(isolated / "cache" / "bayesprune" / "fashion-mnist"),
        "apt-get install dataset-fashion-mnist",
        "BAYESPRUNE_DATA",
        "download",
    ):
        assert needle in msg


def test_partial_directory_is_not_enough(isolated):
    write_fake(isolated / "fm")
    (isolated / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError):
        load(isolated / "fm", download=False)


def test_download_into_cache(isolated, monkeypatch):
    calls = []

    def fake_download(cache):
        calls.append(cache)
        write_fake(cache / "FashionMNIST" / "raw")

    monkeypatch.setattr(fm, "_download", fake_download)
    ds = load(val_size=4, download=True)
    assert calls == [isolated / "cache" / "bayesprune" / "fashion-mnist"]
    assert len(ds.test) == N_TEST
    # second call finds the cached copy without downloading again
    load(val_size=4, download=True)
    assert len(calls) == 1


def test_failed_download_is_caught(isolated, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading: no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found"):
        load(download=True)


def test_corrupt_file_names_the_file(isolated):
    write_fake(isolated / "fm")
    bad = isolated / "fm" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-4])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        load(isolated / "fm", download=False)


def test_mismatched_counts_and_bad_labels(isolated):
    write_fake(isolated / "fm")
    labels = isolated / "fm" / "t10k-labels-idx1-ubyte.gz"
    save_idx(labels, torch.zeros(N_TEST - 1, dtype=torch.uint8))
    with pytest.raises(ValueError, match="labels"):
        load(isolated / "fm", download=False)
    save_idx(labels, torch.full((N_TEST,), 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="out of range"):
        load(isolated / "fm", download=False)


@pytest.mark.skipif(
    not DEBIAN.is_dir(), reason="Debian package dataset-fashion-mnist not installed"
)
def test_real_debian_copy():
    ds = load(DEBIAN, download=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55_000, 5_000, 10_000)
    assert ds.input_shape == (1, 28, 28)
    assert torch.bincount(ds.test.y).tolist() == [1000] * 10
    assert torch.bincount(ds.train.y, minlength=10).sum() == 55_000
    assert abs(float(ds.train.x.mean())) < 1e-4
    assert float(ds.train.x.std()) == pytest.approx(1.0, abs=1e-4)
