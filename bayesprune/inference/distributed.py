"""Data parallelism for :func:`bayesprune.fit`: one process per device, as under ``torchrun``.

Every process holds the whole model and guide and sees its own share of each mini-batch;
after every backward the gradients of all trained tensors (guide and network) are averaged
over the processes with one ``all_reduce``, so every process takes the same optimizer step
and the processes stay identical -- DistributedDataParallel's semantics, written for a model
whose trained tensors live in a guide and a module together. With each process's likelihood
scaled to the *global* training-set size, the averaged gradient is the gradient of the ELBO
estimated on the global batch.

:class:`Replicas` is what the fit loop talks to; with one process every method is a no-op, so
the loop has no special case. The process group comes from ``torch.distributed`` when the
caller initialised it, else from ``torchrun``'s environment (``WORLD_SIZE > 1``): gloo on CPU,
nccl on CUDA.

>>> replicas = Replicas.from_environment(torch.device("cpu"))
>>> replicas.world, replicas.rank, replicas.main
(1, 0, True)
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bayesprune.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replicas:
    """This process's place among the processes of one fit (``world == 1``: alone)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_environment(cls, device: torch.device, *, who: str = "fit") -> Replicas:
        """Join the process group the caller or ``torchrun`` set up; alone otherwise."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_available():
            raise RuntimeError(f"{who}: WORLD_SIZE={world} but torch.distributed is unavailable")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        atexit.register(_destroy)
        log.info("%s: joined %d processes (%s), rank %d", who, world, backend, dist.get_rank())
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def main(self) -> bool:
        """The process that writes checkpoints and prints."""
        return self.rank == 0

    def average_gradients(self, params: Iterable[Tensor]) -> None:
        """Replace every gradient by its mean over the processes (one ``all_reduce``);
        a parameter without a gradient here counts as a zero gradient."""
        if self.world == 1:
            return
        params = [p for p in params if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    def mean(self, value: Tensor) -> Tensor:
        """The mean of a tensor over the processes (a copy; ``value`` itself when alone)."""
        if self.world == 1:
            return value
        out = value.detach().clone()
        dist.all_reduce(out)
        return out.div_(self.world)

    def any(self, flag: bool) -> bool:
        """``True`` on every process when it is ``True`` on any (e.g. a callback's stop)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, tensors: Iterable[Tensor]) -> None:
        """Copy process 0's values into every process's tensors (in place)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def average_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the processes,
        so that every process evaluates and saves the same network."""
        if self.world == 1:
            return
        with torch.no_grad():
            for b in module.buffers():
                if b.is_floating_point():
                    dist.all_reduce(b)
                    b.div_(self.world)

    def gather(self, state: Tensor) -> list[Tensor]:
        """Every process's copy of a same-shaped tensor (e.g. RNG states), in rank order."""
        if self.world == 1:
            return [state]
        dev = self._device()
        parts = [torch.empty_like(state, device=dev) for _ in range(self.world)]
        dist.all_gather(parts, state.to(dev))
        return [p.cpu() for p in parts]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def check_same(self, what: str, values: Sequence[int]) -> None:
        """Raise on every process when integers that must agree (sizes, steps) differ."""
        if self.world == 1:
            return
        mine = torch.tensor(list(values), dtype=torch.long, device=self._device())
        lo, hi = mine.clone(), mine.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            raise DataError(
                f"fit: the {self.world} processes disagree on {what}: this process (rank "
                f"{self.rank}) has {mine.tolist()}, the range is {lo.tolist()}..{hi.tolist()}"
            )

    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(device: str | torch.device | None, fallback: torch.device) -> torch.device:
    """The fit's device: ``device`` if given (``"cuda"`` means this process's
    ``LOCAL_RANK`` GPU under ``torchrun``), else ``fallback``.

    :raises ValueError: naming the argument, for a device string torch does not know or
        a CUDA device on a machine without one.
    """
    if device is None:
        dev = fallback
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"fit: device={device!r} is not a device torch knows ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"fit: device={str(dev)!r} asked for, but this machine has no CUDA")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"fit: device={str(dev)!r} asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
        torch.cuda.set_device(dev)
    return dev
