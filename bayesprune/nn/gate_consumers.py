"""Where a post-activation gate acts: the inputs of the layers that read a gated unit.

A unit gate placed *after* the nonlinearity (``UnitGates(place="post-activation")``)
multiplies the unit's channel where the next Conv/Linear layers read it -- after the
activation, pooling and flattening in between -- instead of the gated layer's output.
For a hard gate ``z ∈ {0, 1}`` and a nonlinearity with ``act(0) = 0`` (ReLU, pooling) both
placements compute the same network; what differs is the straight-through slope
``∂f/∂z``: before a ReLU it is ``relu'(h)·h``, exactly 0 for a closed gate (``z = 0`` gives
``h = 0`` and ``relu'(0) = 0``), so a closed gate never feels what its unit was worth;
after it the slope is ``⟨∂f/∂a, a⟩`` with ``a = relu(h)`` the unit's activation, whatever
``z`` is.

:func:`gate_consumers` finds, with torch-pruning's dependency graph (traced once), every
Conv/Linear layer whose input channels are the gated layer's output units and how many
input features each unit feeds (1, or the spatial positions of a flattened feature map).
Units coupled to other layers' outputs (a residual sum) or read by anything but a plain
Conv/Linear are refused: their post-activation point is not one module's input.

>>> import torch, torch.nn as nn
>>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
>>> gate_consumers(net, ["0"], torch.zeros(1, 1, 6, 6))
{'0': [('3', 16)]}
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from bayesprune.dependency import dependency_graph, frozen, out_group
from bayesprune.errors import UnsupportedError

_READERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SAME_UNITS = (nn.modules.batchnorm._BatchNorm,)


def gate_consumers(
    module: nn.Module, layers: list[str], x: Tensor
) -> dict[str, list[tuple[str, int]]]:
    """``{gated layer: [(consumer layer, input features per unit), ...]}``.

    :raises UnsupportedError: naming the layer, when its units are coupled to another
        layer's output or read by something other than an ungrouped Conv/Linear.
    """
    with torch.inference_mode(False):  # also when first asked for under inference_mode
        dg = dependency_graph(module, x[:1].clone(), who="UnitGates(place='post-activation')")
    with frozen(dg):
        return _consumers(module, dg, layers)


def _consumers(
    module: nn.Module, dg: tp.DependencyGraph, layers: list[str]
) -> dict[str, list[tuple[str, int]]]:
    names = {m: n for n, m in module.named_modules()}
    out: dict[str, list[tuple[str, int]]] = {}
    for layer in layers:
        target = module.get_submodule(layer)
        group = out_group(dg, target, [0])
        readers: list[tuple[str, int]] = []
        for item in group.items:
            m = item.dep.target.module
            name = names.get(m)
            if name is None:  # torch-pruning's own nodes (flatten, reshape...)
                continue
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                if m is target or isinstance(m, _SAME_UNITS):
                    continue
                raise UnsupportedError(
                    f"UnitGates(place='post-activation'): the units of layer {layer!r} are "
                    f"coupled to the outputs of {name!r} (e.g. a residual sum), so they have "
                    "no single post-activation point; use place='pre-activation'"
                )
            idxs = sorted(int(i) for i in item.idxs)
            grouped = getattr(m, "groups", 1) > 1
            if not isinstance(m, _READERS) or grouped or idxs != list(range(len(idxs))):
                raise UnsupportedError(
                    f"UnitGates(place='post-activation'): the units of layer {layer!r} are "
                    f"read by {name!r} ({type(m).__name__}{', grouped' if grouped else ''}), "
                    "not by a plain Conv/Linear layer; use place='pre-activation'"
                )
            readers.append((name, len(idxs)))
        if not readers:
            raise UnsupportedError(
                f"UnitGates(place='post-activation'): no Conv/Linear layer reads the units of "
                f"{layer!r} (the output layer?); use place='pre-activation'"
            )
        out[layer] = readers
    return out


def input_gate_hook(gate: Tensor, repeat: int):
    """A forward pre-hook multiplying input channel ``c`` of a Conv/Linear by
    ``gate[c // repeat]`` (channel dim 1 for a Conv, the last dim for a Linear)."""

    def hook(module: nn.Module, inputs: tuple) -> tuple:
        x = inputs[0]
        g = gate if repeat == 1 else gate.repeat_interleave(repeat)
        if isinstance(module, nn.Linear):
            return (x * g, *inputs[1:])
        shape = [1] * x.dim()
        shape[1] = -1
        return (x * g.reshape(shape), *inputs[1:])

    return hook
