"""Export a plain network to TorchScript by tracing, checked against the eager module.

Tracing records the operations run on ``example_input``: data-dependent
control flow is frozen to the branch taken. The export therefore compares the
traced module with the eager one on the example input and, by default, on a
batch twice as large (catching a batch size baked into a ``view``), and again
after saving and reloading the file. The file is written atomically.

>>> import tempfile, os, torch
>>> from torch import nn
>>> path = os.path.join(tempfile.mkdtemp(), "net.pt")
>>> _ = export_torchscript(nn.Linear(3, 2), torch.randn(4, 3), path)
>>> torch.jit.load(path)(torch.zeros(1, 3)).shape
torch.Size([1, 2])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bayesprune.atomic import atomic_output
from bayesprune.errors import ExportMismatchError, UnsupportedError
from bayesprune.metrics.flops import _as_args, _eval_mode

__all__ = ["ExportMismatchError", "export_torchscript"]

logger = logging.getLogger(__name__)


def export_torchscript(
    module: nn.Module,
    example_input: Any,
    path: str | os.PathLike[str],
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    check_batch: bool = True,
) -> Path:
    """Trace ``module`` on ``example_input``, check the trace, and save it to ``path``.

    The module is traced in eval mode under ``torch.no_grad()`` (its training
    flags are restored afterwards).

    :param module: the network to export.
    :param example_input: a tensor or tuple of positional tensor arguments.
    :param path: destination file (e.g. ``net.pt``); its directory is created
        if missing. Nothing is written there unless every check passes.
    :param rtol: relative tolerance of the output comparison.
    :param atol: absolute tolerance of the output comparison.
    :param check_batch: also compare on the example input repeated twice along
        dim 0 (skipped if the eager module itself rejects that batch).
    :returns: ``path`` as a :class:`~pathlib.Path`.
    :raises ExportMismatchError: (a ``ValueError``) if the traced or the
        reloaded module's outputs differ from the eager module's.

    >>> import tempfile, os, torch
    >>> from torch import nn
    >>> p = export_torchscript(nn.ReLU(), torch.randn(2, 3), os.path.join(tempfile.mkdtemp(), "r.pt"))
    >>> p.suffix
    '.pt'
    """
    path = Path(path)
    args = _as_args(example_input)
    with _eval_mode(module), torch.no_grad():
        traced = torch.jit.trace(module, args, check_trace=False)
        check_export(module, traced, args, "traced TorchScript module", rtol, atol, check_batch)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            torch.jit.save(traced, str(tmp))
            reloaded = torch.jit.load(str(tmp), map_location=_device_of(args))
            check_export(module, reloaded, args, f"reloaded {path.name}", rtol, atol, False)
    logger.info("saved TorchScript module to %s", path)
    return path


def check_export(
    module: nn.Module,
    exported: Callable[..., Any],
    args: tuple[Any, ...],
    what: str,
    rtol: float,
    atol: float,
    check_batch: bool,
) -> None:
    """Compare ``exported(*args)`` with ``module(*args)``; optionally on a doubled batch too.

    :raises ExportMismatchError: naming ``what`` and the first differing output.
    """
    assert_outputs_close(exported(*args), module(*args), what, rtol, atol)
    if not check_batch:
        return
    doubled = double_batch(args)
    try:
        expected = module(*doubled)
    except Exception as e:  # the eager module cannot take another batch size
        logger.debug("skipping the doubled-batch check of %s: %s", what, e)
        return
    try:
        got = exported(*doubled)
    except Exception as e:
        raise ExportMismatchError(
            f"{what} fails on a batch twice the example's size ({e}); a batch size may be "
            "baked into the export (e.g. x.view(1, -1)); use x.flatten(1) or check_batch=False"
        ) from e
    assert_outputs_close(got, expected, f"{what} (doubled batch)", rtol, atol)


def assert_outputs_close(got: Any, expected: Any, what: str, rtol: float, atol: float) -> None:
    """Raise :class:`ExportMismatchError` unless two (nested) outputs match within tolerance."""
    got_list, expected_list = flatten_outputs(got), flatten_outputs(expected)
    if len(got_list) != len(expected_list):
        raise ExportMismatchError(
            f"{what} returns {len(got_list)} outputs, the eager module {len(expected_list)}"
        )
    for i, (g, e) in enumerate(zip(got_list, expected_list, strict=True)):
        g = torch.as_tensor(g).to(e.device)
        if tuple(g.shape) != tuple(e.shape):
            raise ExportMismatchError(
                f"{what}: output {i} has shape {list(g.shape)}, the eager module {list(e.shape)}"
            )
        if not torch.allclose(g.to(e.dtype), e, rtol=rtol, atol=atol, equal_nan=True):
            diff = (g.to(e.dtype) - e).abs().max().item() if e.numel() else 0.0
            raise ExportMismatchError(
                f"{what}: output {i} differs from the eager module (max |diff| = {diff:.3g}, "
                f"rtol={rtol}, atol={atol})"
            )


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """Tensors of a (nested) tuple/list/dict output, depth first, dicts in insertion order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [t for o in out for t in flatten_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flatten_outputs(o)]
    raise UnsupportedError(f"cannot compare outputs of type {type(out).__name__}; expected tensors")


def double_batch(args: Sequence[Any]) -> tuple[Any, ...]:
    """Every tensor argument (of dim >= 1) concatenated with itself along dim 0."""
    return tuple(
        torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args
    )


def _device_of(args: Sequence[Any]) -> torch.device:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    return torch.device("cpu")
