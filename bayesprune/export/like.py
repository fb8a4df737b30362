"""Reload a saved (extracted) network into a fresh copy of the user's own architecture.

An extracted network has the module tree of the network it came from, with fewer units
in some layers. The ``model.json`` written by :func:`~bayesprune.export.save_network`
records every tensor's shape and every layer's type and sizes, so a freshly built
*dense* instance of the same class is enough to rebuild it, without pickle and without a
``build`` function: each layer of a copy of ``like`` gets tensors of the saved shapes and
its size attributes (``out_features``, ``in_channels``, ``num_features``, ...) set to the
saved ones; every other attribute (kernel size, stride, ...) must agree. An attention
layer saved with some of its heads removed (``PrunedMultiheadAttention``) is rebuilt from
``like``'s ``nn.MultiheadAttention`` with as many heads.

>>> import tempfile, torch
>>> from torch import nn
>>> from bayesprune.export import load_network, save_network
>>> from bayesprune.pruning import KeepSet, extract
>>> def mlp():
...     return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> small = extract(mlp(), {"0": KeepSet(units=torch.tensor([1, 5]), n_units=8)},
...                 example_input=torch.zeros(1, 4))
>>> d = tempfile.mkdtemp()
>>> _ = save_network(small, d, architecture={"input_shape": [4]})
>>> back = load_network(d, like=mlp())
>>> back[0].out_features, back[2].in_features
(2, 2)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from bayesprune.errors import CheckpointError, UnsupportedError
from bayesprune.pruning.head_surgery import replace_heads
from bayesprune.pruning.keepset import KeepSet

__all__ = ["SIZE_ATTRS", "check_outputs_like", "rebuild_like"]

#: the largest example (in elements) built from a recorded ``input_shape`` for the check
MAX_EXAMPLE = 1 << 24

#: layer attributes that follow the layer's kept units (set from the file); every other
#: recorded attribute must be the same in the file and in ``like``
SIZE_ATTRS = (
    "in_features",
    "out_features",
    "in_channels",
    "out_channels",
    "groups",
    "num_features",
    "normalized_shape",
    "num_channels",
    "num_embeddings",
    "embedding_dim",
)


def rebuild_like(like: nn.Module, doc: Mapping[str, Any], where: str) -> nn.Module:
    """A deep copy of ``like`` with the layer sizes and tensor shapes of ``doc`` (a parsed
    ``model.json``); ``like`` is not changed.

    :param like: a freshly built instance of the saved network's (dense) architecture.
    :param doc: the saved description: ``tensors`` (dtype and shape per state-dict key),
        ``layers`` (see :func:`~bayesprune.export.describe_layers`), ``tied``.
    :param where: the file, for messages.
    :raises CheckpointError: naming the layer or tensor, when ``like``'s module tree,
        layer types or fixed attributes differ from the saved network's.
    """
    if not isinstance(like, nn.Module):
        raise UnsupportedError(f"{where}: like must be an nn.Module, got {type(like).__name__}")
    module = copy.deepcopy(like)
    tensors = doc["tensors"]
    rows = {r.get("name"): r for r in doc.get("layers") or [] if isinstance(r, dict)}
    _prune_heads_like(module, tensors, rows, where)
    ours = set(module.state_dict())
    missing, unexpected = sorted(set(tensors) - ours), sorted(ours - set(tensors))
    if missing or unexpected:
        raise CheckpointError(
            f"{where} was not saved from this architecture: like={type(like).__name__} "
            f"lacks tensors {missing} and has tensors {unexpected} the file does not"
        )
    for name, layer in module.named_modules():
        skip = layer._non_persistent_buffers_set  # not in the file: left as like has them
        own = [
            (k, t)
            for k, t in (*layer._parameters.items(), *layer._buffers.items())
            if t is not None and k not in skip
        ]
        if not own:
            continue
        _resize_attrs(name, layer, rows.get(name), where)
        for key, t in own:
            full = f"{name}.{key}" if name else key
            _resize_tensor(layer, key, t, tensors[full], full, where)
    _retie(module, doc.get("tied") or [])
    return module


def check_outputs_like(
    module: nn.Module,
    like: nn.Module,
    architecture: Mapping[str, Any],
    example_input: Tensor | None,
    where: str,
) -> None:
    """Run one example through the reloaded ``module`` and through ``like`` (eval mode, no
    gradients; training modes restored) and compare the shapes of their outputs.

    :param example_input: the example; default: zeros of ``architecture["input_shape"]``
        with a batch of 1, and no check when there is none.
    :raises CheckpointError: naming the file, when the reloaded network fails on the example
        or its output shapes differ from ``like``'s.
    """
    x = example_input
    if x is None:
        x = _zeros(architecture.get("input_shape"))
        if x is None:
            return
        x = x.to(next(iter(like.parameters()), x).device)
    out = {}
    for name, m in (("like", like), ("reloaded", module)):
        modes = {sub: sub.training for sub in m.modules()}
        m.eval()
        try:
            with torch.no_grad():
                out[name] = _shapes(m(x))
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            raise CheckpointError(
                f"{where}: the {name} network fails on an example of shape "
                f"{tuple(x.shape)}: {type(e).__name__}: {e}"
            ) from e
        finally:
            for sub, training in modes.items():
                sub.training = training
    if out["like"] != out["reloaded"]:
        raise CheckpointError(
            f"{where}: the reloaded network's outputs have shapes {out['reloaded']}, like's "
            f"{out['like']}: like is not the saved network's architecture"
        )


def _zeros(shape: Any) -> Tensor | None:
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape
    ):
        return None
    numel = 1
    for n in shape:
        numel *= n
    return torch.zeros((1, *shape)) if numel <= MAX_EXAMPLE else None


def _shapes(out: Any) -> Any:
    if isinstance(out, Tensor):
        return tuple(out.shape)
    if isinstance(out, tuple | list):
        return [_shapes(o) for o in out]
    if isinstance(out, Mapping):
        return {k: _shapes(v) for k, v in out.items()}
    return type(out).__name__


def _resize_attrs(name: str, layer: nn.Module, row: Any, where: str) -> None:
    if row is None:  # saved without a description of this layer: shapes alone decide
        return
    kind = type(layer).__name__
    if row.get("type") != kind:
        raise CheckpointError(
            f"{where}: layer {name!r} was saved as a {row.get('type')}, like has a {kind}"
        )
    for attr, saved in row.items():
        if attr in ("name", "type", "bias") or not hasattr(layer, attr):
            continue
        now = getattr(layer, attr)
        value = tuple(saved) if isinstance(now, tuple) and isinstance(saved, list) else saved
        if attr in SIZE_ATTRS:
            if not _is_size(value):
                raise CheckpointError(f"{where}: layer {name!r}: malformed {attr}={saved!r}")
            setattr(layer, attr, value)
        elif value != now and not (isinstance(now, float) and _close(value, now)):
            raise CheckpointError(
                f"{where}: layer {name!r} ({kind}) was saved with {attr}={saved!r}, like has "
                f"{attr}={now!r}: like is not the saved network's architecture"
            )
    has_bias = getattr(layer, "bias", None) is not None
    if "bias" in row and row["bias"] != has_bias:
        raise CheckpointError(
            f"{where}: layer {name!r} was saved {'with' if row['bias'] else 'without'} a bias, "
            f"like's {'has' if has_bias else 'has none'}"
        )


def _resize_tensor(
    layer: nn.Module, key: str, t: Tensor, saved: Mapping[str, Any], full: str, where: str
) -> None:
    shape, dtype = saved["shape"], getattr(torch, str(saved["dtype"]), None)
    if not isinstance(dtype, torch.dtype) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise CheckpointError(f"{where}: malformed shape or dtype for tensor {full!r}: {saved}")
    if len(shape) != t.dim():
        raise CheckpointError(
            f"{where}: tensor {full!r} was saved with shape {shape}, like's has "
            f"{list(t.shape)}: like is not the saved network's architecture"
        )
    new = torch.empty(shape, dtype=dtype, device=t.device)
    if key in layer._parameters:
        layer._parameters[key] = nn.Parameter(new, requires_grad=t.requires_grad)
    else:
        layer._buffers[key] = new


def _prune_heads_like(
    module: nn.Module, tensors: Mapping[str, Any], rows: Mapping[str, Any], where: str
) -> None:
    """Attention layers saved with some heads removed (``PrunedMultiheadAttention``, from
    ``extract``): the ``nn.MultiheadAttention`` of ``module`` in their place becomes one with
    as many heads (the saved tensors fill in which and their values)."""
    heads = {}
    for name, layer in module.named_modules():
        row = rows.get(name) or {}
        saved = tensors.get(f"{name}.heads")
        if not (
            isinstance(layer, nn.MultiheadAttention)
            and row.get("type") == "PrunedMultiheadAttention"
            and isinstance(saved, Mapping)
        ):
            continue
        k = (saved.get("shape") or [None])[0]
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= layer.num_heads:
            raise CheckpointError(
                f"{where}: attention layer {name!r} was saved with heads of shape "
                f"{saved.get('shape')}, like's has {layer.num_heads} heads"
            )
        heads[name] = KeepSet(units=torch.arange(k), n_units=layer.num_heads)
    replace_heads(module, heads)


def _retie(module: nn.Module, tied: list[Any]) -> None:
    """Tensors that shared storage when saved share it again."""
    for group in tied:
        if not isinstance(group, list) or len(group) < 2:
            continue
        first = module.get_parameter(group[0]) if _is_param(module, group[0]) else None
        if first is None:
            continue
        for key in group[1:]:
            if _is_param(module, key):
                owner, _, attr = key.rpartition(".")
                module.get_submodule(owner)._parameters[attr] = first


def _is_param(module: nn.Module, key: Any) -> bool:
    try:
        module.get_parameter(str(key))
    except AttributeError:
        return False
    return True


def _is_size(value: Any) -> bool:
    items = value if isinstance(value, tuple) else (value,)
    return all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in items)


def _close(a: Any, b: float) -> bool:
    return isinstance(a, int | float) and abs(a - b) <= 1e-12 * max(1.0, abs(b))
