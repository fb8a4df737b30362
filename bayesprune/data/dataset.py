"""In-memory data sets with deterministic, index-slice batching.

Every split is held as two tensors (inputs and integer labels). Batches are
gathered with one ``index_select`` per batch from a seeded permutation, so the
hot loop does no per-sample Python work and the order of epoch ``e`` is a pure
function of ``(seed, e)`` -- which is what lets a killed fit resume mid-epoch.

>>> import torch
>>> from bayesprune.data import Dataset, Split
>>> ds = Dataset(train=Split(torch.randn(10, 3), torch.arange(10) % 2), n_classes=2)
>>> [len(y) for _, y in ds.batches(4, epoch=0, seed=0)]
[4, 4, 2]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from bayesprune.errors import ConfigError, DataError


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order in a fit seeded with ``seed``."""
    return int(seed) * 1_000_003 + int(epoch)


@dataclass(frozen=True)
class Split:
    """One split of a data set: inputs ``x`` and targets ``y`` with the same first dimension."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"Split: x has {self.x.shape[0]} rows but y has {self.y.shape[0]}; they must match"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test splits held in memory.

    :param train: the training split (the only one SVI sees).
    :param val: validation split carved from the training data; used for every
        decision (early stop, model choice). May be ``None``.
    :param test: held-out test split, only ever reported, never used to decide.
    :param n_classes: number of classes for classification targets (``None`` for regression).
    :param name: a label for reports.
    """

    train: Split
    val: Split | None = None
    test: Split | None = None
    n_classes: int | None = None
    name: str = "data"

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example (without the batch dimension)."""
        return tuple(self.train.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with every split moved to ``device``."""
        return replace(
            self,
            train=self.train.to(device),
            val=None if self.val is None else self.val.to(device),
            test=None if self.test is None else self.test.to(device),
        )

    def first(self, n_train: int) -> Dataset:
        """The same data set with only its first ``n_train`` training examples (the other
        splits whole), for quick runs.

        >>> ds = Dataset(train=Split(torch.zeros(10, 2), torch.zeros(10)), n_classes=2)
        >>> len(ds.first(4).train), len(ds.first(40).train)
        (4, 10)
        """
        n = min(int(n_train), self.n_train)
        return replace(self, train=Split(self.train.x[:n], self.train.y[:n]))

    def split(self, name: str) -> Split:
        s = getattr(self, name, None)
        if not isinstance(s, Split):
            raise ConfigError(f"data set {self.name!r} has no {name!r} split")
        return s

    def num_batches(self, batch_size: int, split: str = "train") -> int:
        n = len(self.split(split))
        return (n + batch_size - 1) // batch_size

    def permutation(self, epoch: int, seed: int, split: str = "train") -> Tensor:
        """The order of examples in ``epoch``: a pure function of ``(seed, epoch)``."""
        g = torch.Generator(device="cpu")
        g.manual_seed(epoch_seed(seed, epoch))
        return torch.randperm(len(self.split(split)), generator=g)

    def batches(
        self,
        batch_size: int,
        *,
        epoch: int = 0,
        seed: int = 0,
        split: str = "train",
        shuffle: bool = True,
        start: int = 0,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` mini-batches; ``start`` skips the first ``start`` batches (resume)."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        s = self.split(split)
        n = len(s)
        if shuffle:
            order = self.permutation(epoch, seed, split).to(s.x.device)
            for i in range(start * batch_size, n, batch_size):
                idx = order[i : i + batch_size]
                yield s.x.index_select(0, idx), s.y.index_select(0, idx)
        else:
            for i in range(start * batch_size, n, batch_size):
                yield s.x[i : i + batch_size], s.y[i : i + batch_size]
