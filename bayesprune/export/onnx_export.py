"""Export a plain network to ONNX with a dynamic batch axis, checked with onnxruntime.

Needs the optional extra ``bayesprune[export]`` (``onnx``; ``onnxruntime`` for
the numerical check). The classic TorchScript-based exporter
(``dynamo=False``) is tried first: it needs nothing beyond torch and handles
the plain feed-forward networks that extraction produces. If it fails, the
``torch.export``-based exporter is tried (it needs ``onnxscript``). The file is
written to a temporary name, validated with ``onnx.checker``, compared with
the eager module under onnxruntime on the example batch and on a doubled one,
and only then renamed onto ``path``.

>>> import tempfile, os, torch
>>> from torch import nn
>>> path = os.path.join(tempfile.mkdtemp(), "net.onnx")
>>> _ = export_onnx(nn.Linear(3, 2), torch.randn(4, 3), path)
>>> import onnx
>>> onnx.load(path).graph.input[0].name
'input'
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from bayesprune.atomic import atomic_output
from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.export.torchscript import (
    ExportMismatchError,
    assert_outputs_close,
    double_batch,
    flatten_outputs,
)
from bayesprune.metrics.flops import _as_args, _eval_mode

__all__ = ["export_onnx"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = "install the optional extra: pip install 'bayesprune[export]'"


def export_onnx(
    module: nn.Module,
    example_input: Any,
    path: str | os.PathLike[str],
    *,
    check: bool = True,
    opset: int | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
    exporter: Literal["auto", "torchscript", "dynamo"] = "auto",
) -> Path:
    """Export ``module`` to an ONNX file whose batch dimension is dynamic.

    The module is exported in eval mode (training flags restored afterwards).

    :param module: the network to export.
    :param example_input: a tensor or a tuple of positional tensor arguments.
    :param path: destination ``.onnx`` file; its directory is created if
        missing. Nothing is written there unless every check passes.
    :param check: run the exported model with onnxruntime (if importable;
        otherwise a warning is logged) and compare with the eager module.
    :param opset: ONNX opset version; default: the exporter's.
    :param rtol: relative tolerance of the output comparison.
    :param atol: absolute tolerance of the output comparison.
    :param input_names: graph input names; default ``input`` (one input) or
        ``input_0``, ``input_1``, ...
    :param output_names: graph output names; default ``output`` or
        ``output_0``, ...
    :param dynamic_batch: mark dim 0 of every input and output as dynamic
        (``batch``), and check a doubled batch too.
    :param exporter: ``"torchscript"`` (classic, ``dynamo=False``),
        ``"dynamo"`` (``torch.export``-based) or ``"auto"`` (the first, then
        the second if it fails).
    :returns: ``path`` as a :class:`~pathlib.Path`.
    :raises ImportError: if ``onnx`` (or, for ``exporter="dynamo"``,
        ``onnxscript``) is not installed.
    :raises ExportMismatchError: (a ``ValueError``) if onnxruntime's outputs
        differ from the eager module's.
    :raises RuntimeError: if no exporter could export the module.

    >>> import tempfile, os, torch
    >>> from torch import nn
    >>> p = export_onnx(nn.Tanh(), torch.randn(2, 3), os.path.join(tempfile.mkdtemp(), "t.onnx"))
    >>> p.name
    't.onnx'
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"export_onnx needs the 'onnx' package; {_INSTALL_HINT}") from e
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ConfigError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    path = Path(path)
    args = _as_args(example_input)
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            raise UnsupportedError(
                f"export_onnx: input {i} is a {type(a).__name__}, expected a tensor"
            )

    with _eval_mode(module), torch.no_grad():
        expected = module(*args)
        n_out = len(flatten_outputs(expected))
        input_names = _names(input_names, len(args), "input")
        output_names = _names(output_names, n_out, "output")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            used = _export(
                module, args, tmp, opset, input_names, output_names, dynamic_batch, exporter
            )
            try:
                onnx.checker.check_model(str(tmp))
            except Exception as e:
                raise RuntimeError(f"the {used} exporter wrote an invalid ONNX model: {e}") from e
            if check:
                _check_with_onnxruntime(
                    module, tmp, args, expected, input_names, rtol, atol, dynamic_batch
                )
    logger.info("saved ONNX model (%s exporter) to %s", used, path)
    return path


def _export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    tmp: Path,
    opset: int | None,
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool,
    exporter: str,
) -> str:
    """Run the chosen exporter(s); return the name of the one that succeeded."""
    errors = []
    if exporter in ("auto", "torchscript"):
        try:
            _export_classic(module, args, tmp, opset, input_names, output_names, dynamic_batch)
            return "torchscript"
        except Exception as e:
            if exporter == "torchscript":
                raise RuntimeError(f"ONNX export (classic exporter) failed: {e}") from e
            logger.warning("classic ONNX exporter failed (%s); trying the dynamo exporter", e)
            errors.append(f"classic exporter: {e}")
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError as e:
        if errors:  # auto: the classic exporter's failure is the real news
            raise RuntimeError(
                f"ONNX export failed: {errors[0]}; the dynamo exporter, tried next, "
                "needs the 'onnxscript' package, which is not installed"
            ) from e
        raise ImportError("the dynamo ONNX exporter needs the 'onnxscript' package") from e
    try:
        _export_dynamo(module, args, tmp, opset, input_names, output_names, dynamic_batch)
    except Exception as e:
        errors.append(f"dynamo exporter: {e}")
        raise RuntimeError("ONNX export failed: " + "; ".join(errors)) from e
    return "dynamo"


def _export_classic(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    tmp: Path,
    opset: int | None,
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool,
) -> None:
    dynamic_axes = (
        {name: {0: "batch"} for name in [*input_names, *output_names]} if dynamic_batch else None
    )
    with warnings.catch_warnings():
        # We choose the classic exporter on purpose; torch warns about it on every call,
        # attributing the warning to our code.
        warnings.filterwarnings(
            "ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning
        )
        torch.onnx.export(
            module,
            args,
            str(tmp),
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
        )


def _export_dynamo(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    tmp: Path,
    opset: int | None,
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool,
) -> None:
    dynamic_shapes = None
    if dynamic_batch:
        # AUTO rather than a named Dim: an example batch of 1 would otherwise fail to
        # export; a batch that gets specialised is caught by the doubled-batch check.
        dynamic_shapes = tuple({0: torch.export.Dim.AUTO} for _ in args)
    torch.onnx.export(
        module,
        args,
        str(tmp),
        dynamo=True,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=dynamic_shapes,
        opset_version=opset,
        external_data=False,
    )


def _check_with_onnxruntime(
    module: nn.Module,
    model_path: Path,
    args: tuple[torch.Tensor, ...],
    expected: Any,
    input_names: list[str],
    rtol: float,
    atol: float,
    dynamic_batch: bool,
) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        logger.warning("onnxruntime is not installed; %s not checked numerically", model_path.name)
        return
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )

    def run(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        feed = {n: a.detach().cpu().numpy() for n, a in zip(input_names, inputs, strict=True)}
        return [torch.from_numpy(o) for o in session.run(None, feed)]

    cpu_expected = [t.detach().cpu() for t in flatten_outputs(expected)]
    assert_outputs_close(run(args), cpu_expected, "onnxruntime", rtol, atol)
    if not dynamic_batch:
        return
    doubled = double_batch(args)
    try:
        expected2 = [t.detach().cpu() for t in flatten_outputs(module(*doubled))]
    except Exception as e:  # the eager module cannot take another batch size
        logger.debug("skipping the doubled-batch onnxruntime check: %s", e)
        return
    try:
        got2 = run(doubled)
    except Exception as e:
        raise ExportMismatchError(
            f"onnxruntime fails on a batch twice the example's size ({e}); the batch size "
            "may be baked into the export (e.g. x.view(1, -1)); use x.flatten(1) or "
            "dynamic_batch=False"
        ) from e
    assert_outputs_close(got2, expected2, "onnxruntime (doubled batch)", rtol, atol)


def _names(names: Sequence[str] | None, n: int, stem: str) -> list[str]:
    if names is None:
        return [stem] if n == 1 else [f"{stem}_{i}" for i in range(n)]
    names = list(names)
    if len(names) != n:
        raise ConfigError(f"expected {n} {stem} names, got {len(names)}: {names}")
    return names
