"""Save and load plain networks as ``model.safetensors`` plus ``model.json``, without pickle.

The safetensors file holds the state dict (parameters and persistent
buffers). The JSON file holds what is needed to rebuild and check it:

- ``architecture``: the caller's dict (e.g. a zoo config with the kept
  widths), handed back to a ``build`` function on load;
- ``layers``: the per-layer structure read off the module (type, widths,
  kernel sizes, ...), see :func:`describe_layers`;
- ``tensors``: dtype and shape of every tensor; ``tied``: keys that shared
  storage when saved; ``sha256`` and ``num_bytes`` of the weights file;
- ``extra``: anything else JSON-serialisable (keep-set summary, metrics).

Both files are written atomically (:func:`bayesprune.atomic.atomic_write`), so a
reader sees either the old file or the new one.
Loading only reads.

>>> import tempfile, torch
>>> from torch import nn
>>> net = nn.Linear(3, 2)
>>> d = tempfile.mkdtemp()
>>> _ = save_network(net, d, architecture={"in": 3, "out": 2})
>>> back = load_network(d, lambda arch: nn.Linear(arch["in"], arch["out"]))
>>> torch.equal(back.weight, net.weight)
True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import nn

from bayesprune.atomic import atomic_write
from bayesprune.errors import CheckpointError, ConfigError, UnsupportedError
from bayesprune.export.like import check_outputs_like, rebuild_like

__all__ = ["describe_layers", "load_network", "save_network"]

logger = logging.getLogger(__name__)

FORMAT = "bayesprune.network"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"

_LAYER_ATTRS = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "output_padding",
    "groups",
    "padding_mode",
    "num_features",
    "eps",
    "momentum",
    "affine",
    "track_running_stats",
    "normalized_shape",
    "elementwise_affine",
    "num_groups",
    "num_channels",
    "num_embeddings",
    "embedding_dim",
    "padding_idx",
)


def save_network(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    architecture: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``module``'s state dict and a JSON description next to each other.

    :param module: the (plain) network to save.
    :param path: a directory (created if missing), which receives
        ``model.safetensors`` and ``model.json``; or a path ending in
        ``.safetensors`` or ``.json``, whose stem names both files
        (``out/lenet.json`` gives ``out/lenet.safetensors`` and ``out/lenet.json``).
    :param architecture: JSON-serialisable description from which a ``build``
        function can recreate a module of the same shapes; it is returned
        to ``build`` on load as decoded JSON (tuples become lists).
    :param extra: further JSON-serialisable information (metrics, keep-set
        summary, provenance).
    :returns: the paths ``(weights, json)`` written.
    :raises TypeError: if ``architecture`` or ``extra`` cannot be written as
        JSON, or a tensor is not a dense (strided) tensor.
    :raises ValueError: for non-finite floats in ``architecture`` or ``extra``.

    >>> import tempfile
    >>> from torch import nn
    >>> weights, meta = save_network(nn.Linear(2, 1), tempfile.mkdtemp(), architecture={})
    >>> weights.name, meta.name
    ('model.safetensors', 'model.json')
    """
    if not isinstance(module, nn.Module):
        raise UnsupportedError(f"save_network expects an nn.Module, got {type(module).__name__}")
    if not isinstance(architecture, Mapping):
        raise UnsupportedError(f"architecture must be a dict, got {type(architecture).__name__}")
    if extra is not None and not isinstance(extra, Mapping):
        raise UnsupportedError(f"extra must be a dict or None, got {type(extra).__name__}")
    weights_path, meta_path = _paths(path)

    state = module.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            raise UnsupportedError(
                f"state dict entry {key!r} is not a dense tensor ({type(t).__name__})"
            )
        # A fresh contiguous CPU copy per key: safetensors refuses tensors sharing memory.
        tensors[key] = t.detach().to("cpu", copy=True).contiguous()
    blob = _st_save(tensors, metadata={"format": "pt"})

    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "weights_file": weights_path.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "num_bytes": len(blob),
        "torch_version": torch.__version__,
        "architecture": dict(architecture),
        "layers": describe_layers(module),
        "tensors": {
            k: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)} for k, t in tensors.items()
        },
        "tied": _tied_groups(state),
        "extra": dict(extra) if extra is not None else {},
    }
    try:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    except TypeError as e:
        raise UnsupportedError(f"architecture and extra must be JSON-serialisable: {e}") from e
    except ValueError as e:
        raise ConfigError(f"architecture and extra must be JSON-serialisable: {e}") from e

    weights_path.parent.mkdir(parents=True, exist_ok=True)
    # Weights first: a crash in between leaves a JSON whose sha256 no longer matches,
    # which load_network reports, rather than a silently stale pair.
    atomic_write(weights_path, blob)
    atomic_write(meta_path, text.encode("utf-8"))
    logger.info("saved %d tensors to %s (+ %s)", len(tensors), weights_path, meta_path.name)
    return weights_path, meta_path


def load_network(
    path: str | os.PathLike[str],
    build: Callable[[dict[str, Any]], nn.Module] | None = None,
    *,
    like: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Rebuild a network saved by :func:`save_network`; only reads the files.

    Give either ``build`` or ``like``:

    :param path: the directory or either file given to (or returned by)
        :func:`save_network`.
    :param build: called with the saved ``architecture`` dict; must return a
        module whose state dict has exactly the saved keys, shapes and dtypes.
    :param like: a freshly built instance of the saved network's architecture, at its
        full (dense) size: an extracted copy of one's own network is reloaded into a copy
        of it, each layer resized to the saved shapes (:mod:`bayesprune.export.like`;
        ``like`` itself is not changed). Then one example runs through both, and their
        outputs must have the same shapes.
    :param example_input: the input of that check; default: zeros of the
        ``input_shape`` the saved ``architecture`` records (no check without one).
    :param device: where to put the loaded module; default: CPU.
    :returns: the module returned by ``build``, or the resized copy of ``like``, with the
        saved tensors loaded.
    :raises FileNotFoundError: if a file is missing.
    :raises CheckpointError: (a ``ValueError``) naming the file, if a file is corrupt,
        truncated or not in this format; naming the key, if a tensor's shape or dtype
        differs between the JSON, the weights file and the built module; naming the layer,
        if ``like`` is not the saved network's architecture.

    >>> import tempfile
    >>> from torch import nn
    >>> d = tempfile.mkdtemp()
    >>> _ = save_network(nn.Linear(2, 1), d, architecture={"n": 2})
    >>> load_network(d, lambda a: nn.Linear(a["n"], 1)).weight.shape
    torch.Size([1, 2])
    >>> load_network(d, like=nn.Linear(2, 1)).weight.shape
    torch.Size([1, 2])
    """
    if (build is None) == (like is None):
        raise ConfigError(
            "load_network: pass build= (a function of the saved architecture) or like= (a "
            "fresh instance of the saved network's architecture), one of the two"
        )
    weights_path, meta_path = _paths(path, create=False)
    doc = _read_meta(meta_path)
    # the whole file is read once: its sha256 is checked against the JSON before anything
    # is parsed, so ``safe_open`` (lazy, per tensor) would only read the bytes a second time.
    # The JSON's per-tensor shape/dtype is what lets ``like=``/``build`` be checked against
    # the saved network without touching the weights, and names the culprit on a mismatch.
    blob = weights_path.read_bytes()
    if "num_bytes" in doc and len(blob) != doc["num_bytes"]:
        raise CheckpointError(
            f"{weights_path}: {len(blob)} bytes but {meta_path.name} records {doc['num_bytes']}; "
            "the file is truncated or does not belong to this JSON"
        )
    if "sha256" in doc and hashlib.sha256(blob).hexdigest() != doc["sha256"]:
        raise CheckpointError(
            f"{weights_path}: sha256 does not match {meta_path.name}; the file is corrupt "
            "or does not belong to this JSON"
        )
    try:
        tensors = _st_load(blob)
    except Exception as e:  # safetensors raises its own SafetensorError and others
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({e})") from e

    described = doc["tensors"]
    _check_keys(set(described), set(tensors), str(meta_path), str(weights_path))
    for key, t in tensors.items():
        _check_tensor(key, described[key], t, weights_path.name, file=meta_path)

    if like is not None:
        module = rebuild_like(like, doc, str(meta_path))
    else:
        module = build(doc["architecture"])  # type: ignore[misc]
        if not isinstance(module, nn.Module):
            raise UnsupportedError(f"build must return an nn.Module, got {type(module).__name__}")
    expected = module.state_dict()
    _check_keys(set(described), set(expected), str(meta_path), "the built module")
    for key, t in expected.items():
        _check_tensor(key, described[key], t, "the built module", file=meta_path)
    module.load_state_dict(tensors, strict=True)
    if like is not None:
        check_outputs_like(module, like, doc["architecture"], example_input, str(meta_path))
    if device is not None:
        module.to(device)
    return module


def describe_layers(module: nn.Module) -> list[dict[str, Any]]:
    """Structure of every module that directly owns parameters or buffers.

    :param module: any ``nn.Module``.
    :returns: rows ``{"name", "type", ...}`` with the module's shape-defining
        attributes (``in_features``, ``out_channels``, ``kernel_size``,
        ``groups``, ``num_features``, ...; tuples as lists) and ``bias``
        (whether a bias exists) where the module has that attribute.

    >>> from torch import nn
    >>> describe_layers(nn.Sequential(nn.Linear(3, 2)))
    [{'name': '0', 'type': 'Linear', 'in_features': 3, 'out_features': 2, 'bias': True}]
    """
    rows = []
    for name, m in module.named_modules():
        if not any(True for _ in m.parameters(recurse=False)) and not any(
            True for _ in m.buffers(recurse=False)
        ):
            continue
        row: dict[str, Any] = {"name": name, "type": type(m).__name__}
        for attr in _LAYER_ATTRS:
            if hasattr(m, attr):
                value = _jsonable(getattr(m, attr))
                if value is not _SKIP:
                    row[attr] = value
        if hasattr(m, "bias") and (m.bias is None or isinstance(m.bias, torch.Tensor)):
            row["bias"] = m.bias is not None
        rows.append(row)
    return rows


#: the former name of :func:`bayesprune.atomic.atomic_write`
atomic_write_bytes = atomic_write


def _paths(path: str | os.PathLike[str], *, create: bool = True) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        return p.with_suffix(".safetensors"), p.with_suffix(".json")
    if not create and not p.is_dir():
        raise FileNotFoundError(f"{p}: no such directory (expected {WEIGHTS_NAME} and {META_NAME})")
    return p / WEIGHTS_NAME, p / META_NAME


def _read_meta(meta_path: Path) -> dict[str, Any]:
    raw = meta_path.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(
            f"{meta_path}: not valid JSON ({e}); the file is corrupt or truncated"
        ) from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a {FORMAT} description (no 'format': {FORMAT!r})")
    version = doc.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{meta_path}: missing or malformed 'format_version'")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format_version {doc['format_version']} is newer than this "
            f"bayesprune reads ({FORMAT_VERSION})"
        )
    for field in ("architecture", "tensors"):
        if not isinstance(doc.get(field), dict):
            raise CheckpointError(f"{meta_path}: missing or malformed {field!r}")
    for key, spec in doc["tensors"].items():
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("dtype"), str)
            or not isinstance(spec.get("shape"), list)
        ):
            raise CheckpointError(f"{meta_path}: malformed entry for tensor {key!r}")
    return doc


def _check_keys(described: set[str], actual: set[str], meta: str, where: str) -> None:
    missing = sorted(described - actual)
    unexpected = sorted(actual - described)
    if missing:
        raise CheckpointError(
            f"{where} lacks tensor {missing[0]!r} listed in {meta} (missing: {missing})"
        )
    if unexpected:
        raise CheckpointError(
            f"{where} has tensor {unexpected[0]!r} not listed in {meta} (unexpected: {unexpected})"
        )


def _check_tensor(
    key: str, spec: Mapping[str, Any], t: torch.Tensor, where: str, file: Any = None
) -> None:
    shape, dtype = list(t.shape), _dtype_name(t.dtype)
    if shape != spec["shape"] or dtype != spec["dtype"]:
        prefix = f"{file}: " if file else ""
        raise CheckpointError(
            f"{prefix}{key!r}: saved as {spec['dtype']}{spec['shape']} but {where} has "
            f"{dtype}{shape}"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tied_groups(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Groups of state-dict keys that are views of the very same memory (tied weights)."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for key, t in state.items():
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided or t.numel() == 0:
            continue
        ident = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        groups.setdefault(ident, []).append(key)
    return [keys for keys in groups.values() if len(keys) > 1]


_SKIP = object()


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else _SKIP
    if isinstance(value, tuple | list):
        items = [_jsonable(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    return _SKIP
