"""Data sets held in memory: Fashion-MNIST, synthetic data, and the IDX reader.

>>> from bayesprune.data import get_dataset
>>> ds = get_dataset("synthetic", n_train=32, n_val=8, n_test=8)
>>> ds.name, len(ds.train)
('synthetic', 32)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bayesprune.data.batches import LoaderBatches, TensorBatches
from bayesprune.data.dataset import Dataset, Split
from bayesprune.data.fashion_mnist import fashion_mnist
from bayesprune.data.idx import load_idx, save_idx
from bayesprune.data.synthetic import synthetic_classification, synthetic_regression
from bayesprune.errors import ConfigError

__all__ = [
    "DATASETS",
    "Dataset",
    "LoaderBatches",
    "Split",
    "TensorBatches",
    "fashion_mnist",
    "get_dataset",
    "load_idx",
    "save_idx",
    "synthetic_classification",
    "synthetic_regression",
]

DATASETS: dict[str, Callable[..., Dataset]] = {
    "fashion-mnist": fashion_mnist,
    "synthetic": synthetic_classification,
}


def get_dataset(name: str, **kwargs: Any) -> Dataset:
    """Load a data set by name (``"fashion-mnist"`` or ``"synthetic"``).

    Names are case-insensitive and ``_`` is read as ``-``.

    :param name: one of the keys of :data:`DATASETS`.
    :param kwargs: passed to the loader (e.g. ``val_size``, ``seed``, ``flatten``).
    :raises ValueError: for an unknown name, listing the known ones.

    >>> get_dataset("synthetic", n_train=16, n_val=0, n_test=0, n_classes=2).n_classes
    2
    """
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[key](**kwargs)
