"""Where a fit's mini-batches come from: in-memory tensors or any PyTorch ``DataLoader``.

Both sources give :func:`bayesprune.fit` the same four things: the training-set size
``n_data`` (the plate the likelihood is scaled to), the number of batches per epoch on this
process, an iterator over epoch ``e``'s ``(x, y)`` batches on the fit's device, starting at
batch ``start`` (resume), and the first batch (for the checks before training).

- :class:`TensorBatches` slices a seeded permutation of in-memory tensors (one
  ``index_select`` per batch, no per-example Python work): the fast default. Under data
  parallelism every process draws the same permutation and takes its own slice of each
  *global* batch, so ``batch_size`` is the global batch and the fit does not depend on the
  number of processes.
- :class:`LoaderBatches` iterates a ``torch.utils.data.DataLoader`` (or any re-iterable of
  ``(x, y)`` batches): augmentation, data on disk, image folders. Its order is made a function
  of ``(seed, epoch)`` -- a ``DistributedSampler`` gets ``set_epoch``, a shuffling loader is
  iterated under a torch RNG seeded from ``(seed, epoch)`` -- so a resumed fit sees the same
  batches. A loader's ``batch_size`` is per process, as in PyTorch.

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from bayesprune.data import Split
>>> x, y = torch.randn(10, 3), torch.arange(10) % 2
>>> src = TensorBatches(Split(x, y), batch_size=4)
>>> len(src), src.n_data, [len(b[1]) for b in src.epoch(0, seed=0)]
(3, 10, [4, 4, 2])
>>> src = LoaderBatches(DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True))
>>> len(src), src.n_data, [len(b[1]) for b in src.epoch(0, seed=0)]
(3, 10, [4, 4, 2])
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from bayesprune.data.dataset import Split, epoch_seed
from bayesprune.errors import ConfigError, DataError, UnsupportedError

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]


class TensorBatches:
    """Mini-batches sliced from in-memory tensors, sharded over ``world`` processes.

    :param split: the training tensors (moved to ``device`` once).
    :param batch_size: the *global* batch; each of the ``world`` processes takes
        ``batch_size / world`` examples of it (must divide).
    :param rank: this process's index in ``range(world)``.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        device: torch.device | str | None = None,
        rank: int = 0,
        world: int = 1,
        who: str = "fit",
    ) -> None:
        if batch_size % world:
            raise ConfigError(
                f"{who}: batch_size={batch_size} is the global batch and must be divisible by "
                f"the number of processes ({world}); use a multiple of {world}"
            )
        self.split = split if device is None else split.to(device)
        self.batch_size, self.rank, self.world = batch_size, rank, world
        n = len(split)
        if n < world:
            raise DataError(f"{who}: {n} training examples cannot be shared by {world} processes")
        tail = n % batch_size
        # the last global batch loses its remainder over ``world`` (equal shards on every
        # process keep the gradient average exact); fewer than ``world`` examples per epoch
        self.dropped = tail % world
        if self.dropped and rank == 0:
            log.info(
                "%s: the last batch of each epoch drops %d of its %d examples so that %d "
                "processes get equal shares (different examples every epoch)",
                who,
                self.dropped,
                tail,
                world,
            )

    @property
    def n_data(self) -> int:
        return len(self.split)

    def __len__(self) -> int:
        return (self.n_data - self.dropped + self.batch_size - 1) // self.batch_size

    @property
    def length(self) -> int:
        """Batches per epoch (on every process)."""
        return len(self)

    def first(self) -> Batch:
        k = max(self.batch_size // self.world, 1)
        return self.split.x[:k], self.split.y[:k]

    def epoch(self, epoch: int, seed: int, start: int = 0) -> Iterator[Batch]:
        """Epoch ``epoch``'s batches from batch ``start`` on: a pure function of ``(seed,
        epoch)``, the same permutation as :meth:`Dataset.permutation`."""
        s, b = self.split, self.batch_size
        g = torch.Generator(device="cpu")
        g.manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(self.n_data, generator=g)
        order = order[: self.n_data - self.dropped].to(s.x.device)
        for i in range(start * b, order.numel(), b):
            idx = order[i : i + b]
            if self.world > 1:
                idx = idx.view(self.world, -1)[self.rank]
            yield s.x.index_select(0, idx), s.y.index_select(0, idx)


class LoaderBatches:
    """Mini-batches from a ``DataLoader`` (or any re-iterable of ``(x, y)`` pairs).

    :param loader: yields ``(x, y)`` tensors with the same first dimension.
    :param n_data: the training-set size; default ``len(loader.dataset)``.
    :param device: batches are moved there (``non_blocking``; pin the loader's memory on CUDA).
    :param rank, world: under data parallelism a ``DataLoader`` whose sampler is not already
        a ``DistributedSampler`` is rebuilt with one (its shuffle setting kept).
    """

    def __init__(
        self,
        loader: Iterable[Any],
        *,
        n_data: int | None = None,
        device: torch.device | str | None = None,
        rank: int = 0,
        world: int = 1,
        who: str = "fit",
        split: str = "training",
    ) -> None:
        self.who, self.split = who, split
        self.device = None if device is None else torch.device(device)
        self.rank, self.world = rank, world
        if world > 1:
            loader = _distributed(loader, rank, world, who)
        self.loader = loader
        if n_data is None:
            try:
                n_data = len(loader.dataset)  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                n_data = None
        elif isinstance(n_data, bool) or not isinstance(n_data, int) or n_data < 1:
            raise ConfigError(f"{who}: n_data must be a positive integer, got {n_data!r}")
        self._n_data = n_data
        try:
            self._len: int | None = len(loader)  # type: ignore[arg-type]
        except TypeError:
            self._len = None
        if self._len == 0:
            raise DataError(f"{who}: the {split} loader is empty (len() == 0)")

    @property
    def n_data(self) -> int:
        """The training-set size (the plate the likelihood is scaled to)."""
        if self._n_data is None:
            raise DataError(
                f"{self.who}: cannot tell the {self.split}-set size from this "
                f"{type(self.loader).__name__} (no len() on its data set); pass n_data="
            )
        return self._n_data

    @property
    def sharded(self) -> bool:
        return isinstance(getattr(self.loader, "sampler", None), DistributedSampler)

    def __len__(self) -> int:
        if self._len is None:
            raise UnsupportedError(f"{self.who}: the {self.split} loader has no len()")
        return self._len

    @property
    def length(self) -> int | None:
        """Batches per epoch on this process, ``None`` when the loader cannot tell."""
        return self._len

    def first(self) -> Batch:
        """The first batch of epoch 0 (seeded like :meth:`epoch`, the fit's RNG untouched)."""
        for batch in self.epoch(0, seed=0):
            return batch
        raise DataError(f"{self.who}: the {self.split} loader yielded no batch")

    def epoch(self, epoch: int, seed: int, start: int = 0) -> Iterator[Batch]:
        """Epoch ``epoch``'s batches from batch ``start`` on.

        The order (sampler, workers' seeds) is drawn under a torch RNG seeded from ``(seed,
        epoch)`` and the fit's own RNG is left as it was; the ``start`` batches skipped on
        resume are loaded and thrown away (a loader cannot jump ahead)."""
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        generator = getattr(self.loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(epoch_seed(seed, epoch))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(epoch_seed(seed, epoch))
            it = iter(self.loader)
            # the first batch draws the sampler's order (and, without workers, its own
            # transforms); on resume the skipped batches are drawn here too, so batch
            # ``start`` is drawn with the fit's restored RNG, as in the uninterrupted fit
            head = list(itertools.islice(it, max(start, 1)))
        if not head:
            raise DataError(
                f"{self.who}: the {self.split} loader yielded no batch in epoch {epoch}"
            )
        for i, item in enumerate(itertools.chain(head[start:], it), start):
            yield self._pair(item, i)

    def _pair(self, item: Any, i: int) -> Batch:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            what = type(item).__name__ + (f" of {len(item)}" if hasattr(item, "__len__") else "")
            raise UnsupportedError(
                f"{self.who}: the {self.split} loader must yield (x, y) pairs; batch {i} is a {what}"
            )
        x, y = item
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
            raise UnsupportedError(
                f"{self.who}: batch {i} of the {self.split} loader holds "
                f"({type(x).__name__}, {type(y).__name__}); expected two tensors"
            )
        if x.shape[0] != y.shape[0]:
            raise DataError(
                f"{self.who}: batch {i} of the {self.split} loader has {x.shape[0]} inputs but "
                f"{y.shape[0]} targets"
            )
        if self.device is not None:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        return x, y


def _distributed(loader: Any, rank: int, world: int, who: str) -> Any:
    """The same loader with a ``DistributedSampler`` (kept if it already has one)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        return loader
    if not isinstance(loader, DataLoader) or not isinstance(
        sampler, (RandomSampler, SequentialSampler)
    ):
        raise UnsupportedError(
            f"{who}: under data parallelism the training loader must be a DataLoader with "
            "shuffle=True/False or a DistributedSampler; give this "
            f"{type(loader).__name__} a DistributedSampler yourself"
        )
    if loader.batch_size is None:
        raise UnsupportedError(f"{who}: cannot shard a DataLoader with a custom batch_sampler")
    shuffle = isinstance(sampler, RandomSampler)
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=DistributedSampler(loader.dataset, num_replicas=world, rank=rank, shuffle=shuffle),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
        prefetch_factor=loader.prefetch_factor,
    )


def is_loader(data: Any) -> bool:
    """A ``DataLoader`` or another re-iterable of batches -- a list of ``(x, y)`` pairs
    counts; an ``(x, y)`` pair of tensors, a ``Dataset`` or an iterator does not."""
    if isinstance(data, DataLoader):
        return True
    if isinstance(data, (list, tuple)):
        return len(data) > 0 and all(
            isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[0], Tensor) for b in data
        )
    return (
        hasattr(data, "__iter__")
        and not isinstance(data, (Tensor, dict, str, bytes))
        and not hasattr(data, "train")
        and iter(data) is not data  # an iterator is used up after one epoch
    )
