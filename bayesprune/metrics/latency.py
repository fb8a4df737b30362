"""Wall-clock latency of a forward pass, measured so that the numbers mean something.

Each measurement runs under ``torch.inference_mode()`` in eval mode, after
``warmup`` untimed calls, timing with ``time.perf_counter``. When one forward
is shorter than ``min_time`` several forwards are timed together (``number``
of them) and divided, so that timer resolution does not dominate. On an
accelerator (CUDA, MPS, XPU) the device is synchronised before starting and
before stopping the clock. We report order statistics (median, percentiles)
rather than only the mean, since latency distributions have long right tails.

What comes from :mod:`torch.utils.benchmark`: ``Timer.blocked_autorange`` chooses
``number`` (its block-size search, which also warms up further) and ``Measurement``
gives the median, mean and interquartile range. What stays ours, and why: the timed
samples themselves. ``blocked_autorange`` runs for a fixed time rather than a fixed
number of samples (``repeats`` is part of the API), cannot interleave two modules, and
``Timer.timeit`` runs at least two untimed forwards before every sample, which would
triple the cost of timing a slow network.

:func:`compare_latency` times two modules interleaved (A, B, A, B, ...), so
that drift (thermal throttling, other processes, frequency scaling) hits both
alike. Never compare numbers taken on different machines or thread counts.

>>> import torch
>>> from torch import nn
>>> r = measure_latency(nn.Linear(8, 8), torch.zeros(4, 8), repeats=3, warmup=1)
>>> r["repeats"], r["batch_size"], r["median"] > 0
(3, 4, True)
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

from bayesprune.errors import ConfigError
from bayesprune.metrics.flops import _as_args, _eval_mode, _infer_batch_size

__all__ = ["compare_latency", "measure_latency"]

logger = logging.getLogger(__name__)

_MAX_NUMBER = 100_000  # cap on forwards per timed sample


def measure_latency(
    module: nn.Module,
    example_input: Any,
    *,
    repeats: int = 30,
    warmup: int = 5,
    device: str | torch.device | None = None,
    threads: int | None = None,
    min_time: float = 1e-3,
) -> dict[str, Any]:
    """Measure the wall time of one forward pass of ``module`` on ``example_input``.

    :param module: the network; it is put in eval mode for the measurement and
        its training flags restored afterwards. If ``device`` differs from
        where its parameters live, a copy is moved there (the module itself is
        not moved).
    :param example_input: a tensor or a tuple/list of positional arguments;
        tensors are moved to ``device``. Dim 0 of the first tensor is recorded
        as ``batch_size``.
    :param repeats: timed samples.
    :param warmup: untimed forwards before timing (allocator, caches, lazy
        init); choosing ``number`` (``Timer.blocked_autorange``) runs a few more,
        so at least one untimed forward runs even with ``warmup=0``.
    :param device: where to run; default: the device of the module's first
        parameter or buffer, else of the first input tensor, else CPU.
    :param threads: intra-op CPU threads for the measurement
        (``torch.set_num_threads``, restored afterwards); default: unchanged.
    :param min_time: shortest duration in seconds of one timed sample; a fast
        forward is repeated ``number`` times within a sample to reach it.
    :returns: a dict of seconds per forward (of the whole batch): ``median``,
        ``mean``, ``min``, ``p10``, ``p25``, ``p75``, ``p90``, ``iqr``, and
        ``per_example_median`` (``median / batch_size``); plus ``repeats``,
        ``warmup``, ``number``, ``batch_size``, ``device``, ``threads``
        (torch's intra-op CPU threads during the measurement) and ``samples``
        (every sample, seconds per forward).

    >>> import torch
    >>> from torch import nn
    >>> r = measure_latency(nn.Linear(8, 8), torch.zeros(1, 8), repeats=5, warmup=1)
    >>> r["p10"] <= r["median"] <= r["p90"]
    True
    """
    _check_counts(repeats, warmup, min_time)
    dev = _resolve_device(module, example_input, device)
    args = _to_device(_as_args(example_input), dev)
    batch_size = _infer_batch_size(args)
    module = _on_device(module, dev)
    with _threads(threads), _eval_mode(module), torch.inference_mode():
        run = _timer(module, args, dev)
        number = _calibrate(module, args, dev, run, warmup, min_time)
        samples = [run(number) for _ in range(repeats)]
        n_threads = torch.get_num_threads()
    return _stats(samples, number, warmup, batch_size, dev, n_threads)


def compare_latency(
    a: nn.Module,
    b: nn.Module,
    example_input: Any,
    *,
    repeats: int = 30,
    warmup: int = 5,
    device: str | torch.device | None = None,
    threads: int | None = None,
    min_time: float = 1e-3,
) -> dict[str, Any]:
    """Time two modules on the same input with their samples interleaved (A, B, A, B, ...).

    The options are those of :func:`measure_latency` and apply to both; the
    device defaults to ``a``'s.

    :param a: the reference network (e.g. the dense original).
    :param b: the candidate network (e.g. the extracted, pruned one).
    :param example_input: input for both.
    :returns: ``{"a": stats, "b": stats, "speedup": a_median / b_median}``
        with ``stats`` as returned by :func:`measure_latency`; a ``speedup``
        above 1 means ``b`` is faster.

    >>> import torch
    >>> from torch import nn
    >>> r = compare_latency(nn.Linear(8, 8), nn.Linear(8, 2), torch.zeros(1, 8), repeats=3)
    >>> sorted(r), r["speedup"] > 0
    (['a', 'b', 'speedup'], True)
    """
    _check_counts(repeats, warmup, min_time)
    dev = _resolve_device(a, example_input, device)
    args = _to_device(_as_args(example_input), dev)
    batch_size = _infer_batch_size(args)
    a, b = _on_device(a, dev), _on_device(b, dev)
    with _threads(threads), _eval_mode(a), _eval_mode(b), torch.inference_mode():
        run_a, run_b = _timer(a, args, dev), _timer(b, args, dev)
        number_a = _calibrate(a, args, dev, run_a, warmup, min_time)
        number_b = _calibrate(b, args, dev, run_b, warmup, min_time)
        samples_a, samples_b = [], []
        for _ in range(repeats):
            samples_a.append(run_a(number_a))
            samples_b.append(run_b(number_b))
        n_threads = torch.get_num_threads()
    stats_a = _stats(samples_a, number_a, warmup, batch_size, dev, n_threads)
    stats_b = _stats(samples_b, number_b, warmup, batch_size, dev, n_threads)
    return {"a": stats_a, "b": stats_b, "speedup": stats_a["median"] / stats_b["median"]}


def paired_latency(
    a: nn.Module, b: nn.Module, example: torch.Tensor, batches: tuple[int, ...] = (1, 256)
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Latency of ``a`` and ``b`` at each batch size, timed interleaved
    (:func:`compare_latency`) so that machine load hits both alike; the examples of
    ``example`` are cycled to make each batch. Returns the two lists of stats, one per
    batch size, as :func:`measure_latency` gives them (without the raw samples).

    >>> import torch
    >>> from torch import nn
    >>> la, lb = paired_latency(nn.Linear(8, 8), nn.Linear(8, 2), torch.zeros(1, 8), (1, 4))
    >>> [s["batch_size"] for s in la], [s["batch_size"] for s in lb]
    ([1, 4], [1, 4])
    """
    la, lb = [], []
    for n in batches:
        x = example.repeat(-(-n // example.shape[0]), *([1] * (example.dim() - 1)))[:n]
        r = compare_latency(a, b, x.contiguous())
        for out, stats in ((la, r["a"]), (lb, r["b"])):
            stats.pop("samples", None)
            out.append(stats)
    return la, lb


def _clock(device: torch.device) -> Callable[[], float]:
    """``perf_counter`` after synchronising ``device`` (``benchmark.timer`` would synchronise
    the current accelerator, which need not be the one measured, even for a CPU run)."""

    def now() -> float:
        _synchronize(device)
        return time.perf_counter()

    return now


def _timer(
    module: nn.Module, args: tuple[Any, ...], device: torch.device
) -> Callable[[int], float]:
    """A function timing ``number`` forwards and returning seconds per forward."""
    clock = _clock(device)

    def run(number: int) -> float:
        start = clock()
        for _ in range(number):
            module(*args)
        return (clock() - start) / number

    return run


def _calibrate(
    module: nn.Module,
    args: tuple[Any, ...],
    device: torch.device,
    run: Callable[[int], float],
    warmup: int,
    min_time: float,
) -> int:
    """Run the warm-up, then let ``Timer.blocked_autorange`` choose how many forwards one
    sample needs to last ``min_time`` (at most ``_MAX_NUMBER``)."""
    for _ in range(warmup):
        run(1)
    timer = benchmark.Timer(
        "module(*args)",
        globals={"module": module, "args": args},
        timer=_clock(device),
        num_threads=torch.get_num_threads(),  # Timer's default is 1 thread
    )
    number = timer.blocked_autorange(min_run_time=min_time).number_per_run
    return min(_MAX_NUMBER, number)


def _stats(
    samples: list[float],
    number: int,
    warmup: int,
    batch_size: int,
    device: torch.device,
    threads: int,
) -> dict[str, Any]:
    measured = benchmark.Measurement(
        number_per_run=1,  # the samples are already seconds per forward
        raw_times=list(samples),
        task_spec=benchmark.TaskSpec("module(*args)", "pass", num_threads=threads),
    )
    # the same linear interpolation as Measurement's quartiles, also at the 10 % tails
    q = torch.tensor(samples, dtype=torch.float64).quantile(
        torch.tensor([0.1, 0.25, 0.75, 0.9], dtype=torch.float64)
    )
    p10, p25, p75, p90 = q.tolist()
    return {
        "median": measured.median,
        "mean": measured.mean,
        "min": min(samples),
        "p10": p10,
        "p25": p25,
        "p75": p75,
        "p90": p90,
        "iqr": measured.iqr,
        "per_example_median": measured.median / batch_size,
        "repeats": len(samples),
        "warmup": warmup,
        "number": number,
        "batch_size": batch_size,
        "device": str(device),
        "threads": threads,
        "samples": list(samples),
    }


def _check_counts(repeats: int, warmup: int, min_time: float) -> None:
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    if min_time < 0:
        raise ConfigError(f"min_time must be >= 0, got {min_time}")


def _resolve_device(
    module: nn.Module, example_input: Any, device: str | torch.device | None
) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in (*module.parameters(), *module.buffers()):
        return t.device
    for a in _as_args(example_input):
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")


def _on_device(module: nn.Module, device: torch.device) -> nn.Module:
    tensors = (*module.parameters(), *module.buffers())
    if all(_same_device(t.device, device) for t in tensors):
        return module
    logger.debug("measuring a copy of %s moved to %s", type(module).__name__, device)
    return copy.deepcopy(module).to(device)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    return _index(a) == _index(b)


def _index(device: torch.device) -> int:
    if device.index is not None:
        return device.index
    accel = getattr(torch, device.type, None)
    current = getattr(accel, "current_device", None)
    return int(current()) if callable(current) else 0


def _to_device(args: tuple[Any, ...], device: torch.device) -> tuple[Any, ...]:
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def _synchronize(device: torch.device) -> None:
    if device.type == "cpu":
        return
    accel = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    sync = getattr(accel, "synchronize", None)
    if sync is None:
        return
    if device.type == "mps":
        sync()
    else:
        sync(device)


class _threads:
    """Context manager setting ``torch.set_num_threads`` and restoring it."""

    def __init__(self, threads: int | None) -> None:
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self.previous = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.previous)
