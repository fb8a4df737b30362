"""Fashion-MNIST as an in-memory :class:`~bayesprune.data.Dataset`.

The four IDX files are looked for, in order, in: an explicit ``root``; the
directory in ``$BAYESPRUNE_DATA``; ``/usr/share/datasets/fashion-mnist`` (the
Debian package ``dataset-fashion-mnist``); and a cache directory
(``$XDG_CACHE_HOME/bayesprune/fashion-mnist``, default ``~/.cache/...``), into
which torchvision downloads them when ``download=True`` and the network allows.

Good: ``fashion_mnist()`` on a machine with the Debian package -- no network needed.
Good: ``BAYESPRUNE_DATA=/data/fmnist`` pointing at a directory holding the four ``.gz`` files.
Bad: normalising with statistics of the validation or test split; this loader
computes mean and std on the training part only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from bayesprune.data.dataset import Dataset, Split
from bayesprune.data.idx import load_idx
from bayesprune.errors import ConfigError, DataError

__all__ = ["fashion_mnist", "find_fashion_mnist"]

logger = logging.getLogger(__name__)

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
ENV_VAR = "BAYESPRUNE_DATA"
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
N_CLASSES = 10


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bayesprune/fashion-mnist`` (``~/.cache/bayesprune/fashion-mnist`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bayesprune" / "fashion-mnist"


def _files_in(directory: Path) -> tuple[Path, ...] | None:
    """The four files in ``directory`` (``.gz`` preferred, plain accepted), or ``None``."""
    found = []
    for name in FILES:
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return tuple(found)


def _candidates(root: str | os.PathLike[str] | None) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root).expanduser())
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.extend(SYSTEM_DIRS)
    cache = cache_dir()
    # torchvision keeps the files it downloads under <root>/FashionMNIST/raw.
    dirs.extend([cache, cache / "FashionMNIST" / "raw"])
    return dirs


def _download(cache: Path) -> None:
    """Ask torchvision to download Fashion-MNIST into ``cache``; log (never raise) on failure."""
    captured = io.StringIO()
    try:
        from torchvision.datasets import FashionMNIST

        cache.mkdir(parents=True, exist_ok=True)
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            FashionMNIST(str(cache), train=True, download=True)
    except Exception as e:  # offline, proxy, checksum, missing torchvision: all mean "not here"
        logger.warning("downloading Fashion-MNIST into %s failed: %s", cache, e)
    finally:
        if captured.getvalue():
            logger.debug("torchvision output:\n%s", captured.getvalue())


def find_fashion_mnist(
    root: str | os.PathLike[str] | None = None, *, download: bool = True
) -> tuple[Path, ...]:
    """Paths of the four Fashion-MNIST files: train images, train labels, test images, test labels.

    :param root: a directory to look in first.
    :param download: if no copy is found, try a torchvision download into :func:`cache_dir`.
    :raises FileNotFoundError: listing every directory looked in and how to get the data.

    >>> paths = find_fashion_mnist(download=False)  # doctest: +SKIP
    >>> [p.name for p in paths]  # doctest: +SKIP
    ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', ...]
    """
    dirs = _candidates(root)
    for i, d in enumerate(dirs):
        files = _files_in(d)
        if files is not None:
            if i > 0 and root is not None:
                logger.warning("Fashion-MNIST not found in root=%s; using %s", root, d)
            logger.info("loading Fashion-MNIST from %s", d)
            return files
    if download:
        _download(cache_dir())
        files = _files_in(cache_dir() / "FashionMNIST" / "raw")
        if files is not None:
            return files
    looked = "\n".join(f"  - {d}" for d in dirs)
    raise FileNotFoundError(
        "Fashion-MNIST not found. Looked for "
        f"{', '.join(f + '.gz' for f in FILES)} in:\n{looked}\n"
        "To get it, do one of:\n"
        "  - apt-get install dataset-fashion-mnist  (installs /usr/share/datasets/fashion-mnist)\n"
        f"  - set {ENV_VAR} to a directory holding the four files\n"
        "  - pass root=<directory>\n"
        "  - allow download=True on a machine with network access"
        + (
            " (a download was tried and failed; see the log)"
            if download
            else " (download=False was given)"
        )
    )


def _load_pair(images: Path, labels: Path) -> tuple[Tensor, Tensor]:
    x = load_idx(images, ndim=3)
    y = load_idx(labels, ndim=1)
    if x.dtype != torch.uint8 or y.dtype != torch.uint8:
        raise DataError(
            f"{images} / {labels}: expected uint8 IDX files, got {x.dtype} and {y.dtype}"
        )
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{images} has {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    if y.numel() and int(y.max()) >= N_CLASSES:
        raise DataError(f"{labels}: label {int(y.max())} out of range [0, {N_CLASSES})")
    return x, y.long()


def fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    flatten: bool = False,
    device: torch.device | str = "cpu",
    download: bool = True,
) -> Dataset:
    """Load Fashion-MNIST with a seeded validation split carved from the training set.

    Inputs are ``float32`` scaled to ``[0, 1]`` and then standardised with the mean
    and standard deviation of the training part (after removing the validation
    examples). The test split is the official 10k test set, untouched.

    :param root: a directory holding the four IDX files (``.gz`` or plain), looked in first.
    :param val_size: number of training examples held out for validation (``0``: no val split).
    :param seed: seed of the permutation that chooses the validation examples.
    :param flatten: return inputs of shape ``(N, 784)`` instead of ``(N, 1, 28, 28)``.
    :param device: where the tensors live.
    :param download: if no local copy is found, try a torchvision download into the cache.
    :returns: a :class:`Dataset` named ``"fashion-mnist"`` with ``n_classes=10``.
    :raises FileNotFoundError: if no copy is found (the message says where it looked).
    :raises ValueError: for a bad ``val_size`` or a corrupt file.

    >>> ds = fashion_mnist(val_size=5000)  # doctest: +SKIP
    >>> len(ds.train), len(ds.val), len(ds.test), ds.input_shape  # doctest: +SKIP
    (55000, 5000, 10000, (1, 28, 28))
    """
    train_images, train_labels, test_images, test_labels = find_fashion_mnist(
        root, download=download
    )
    x_all, y_all = _load_pair(train_images, train_labels)
    x_test, y_test = _load_pair(test_images, test_labels)
    n = x_all.shape[0]
    if not 0 <= val_size < n:
        raise ConfigError(f"val_size must be in [0, {n}) for {n} training images, got {val_size}")

    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    # Sorted indices keep each split in file order (and the gathers cache-friendly).
    val_idx = perm[:val_size].sort().values
    train_idx = perm[val_size:].sort().values

    def prepare(x: Tensor) -> Tensor:
        x = x.to(torch.float32).div_(255.0).unsqueeze(1)
        return x.flatten(1) if flatten else x

    x_train = prepare(x_all.index_select(0, train_idx))
    mean = x_train.mean()
    std = x_train.std()
    if not float(std) > 0:
        raise DataError(f"{train_images}: training images are constant; cannot standardise")
    logger.debug("Fashion-MNIST train mean %.4f std %.4f", float(mean), float(std))

    def standardise(x: Tensor) -> Tensor:
        return x.sub_(mean).div_(std)

    train = Split(standardise(x_train), y_all.index_select(0, train_idx))
    val = None
    if val_size > 0:
        val = Split(
            standardise(prepare(x_all.index_select(0, val_idx))), y_all.index_select(0, val_idx)
        )
    test = Split(standardise(prepare(x_test)), y_test)
    ds = Dataset(train=train, val=val, test=test, n_classes=N_CLASSES, name="fashion-mnist")
    return ds if torch.device(device) == torch.device("cpu") else ds.to(device)
