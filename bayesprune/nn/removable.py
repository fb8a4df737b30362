"""Which layers' output units can be removed exactly, found before anything is fitted.

A structured prior (unit gates, per-unit HALO) is only worth putting on a layer whose units
:func:`~bayesprune.extract` can cut out of the network with the output unchanged: the
collapsed model zeroes a dropped unit's output, and the extracted network must compute the
same without it. :func:`removal_problems` says, per layer, why that fails -- with
torch-pruning's dependency graph (:mod:`bayesprune.dependency`), traced once on the example
input, and one trial removal:

- the layer is not called by the forward pass in eval mode (an auxiliary head, or a layer
  whose weight the network reads directly -- a unit gate on it would never act);
- its units are coupled (the same channels, through a residual sum, an elementwise product, a
  concatenation...) to a module that mixes or normalises channels (LayerNorm, GroupNorm,
  attention, an embedding) or to a bare ``nn.Parameter`` (a class token, a position
  embedding): the residual stream of a transformer or a ConvNeXt;
- its units are outputs of the network;
- its channels pass through an op whose channel mapping torch-pruning cannot compute (a
  channel shuffle, a concatenation along the last dimension), or torch-pruning fails on them;
- its units are channels of a grouped convolution that tied gates cannot keep balanced
  (:mod:`bayesprune.priors.group_ties`);
- they reach a consumer through an op with ``f(0) != 0`` (Sigmoid, Softplus, Exp, ...) that
  no product with a coupled, zeroed channel cancels;
- and, as the backstop for what the graph cannot show, a trial: one unit of every remaining
  layer is dropped at once on a deep copy (in float64 where the network takes it, so that
  float32 rounding is not mistaken for a change), and the collapsed and the cut-down
  network are compared on the example input; where they differ the culprits are found by
  bisection ("removing its units changes the output").

Attention layers, whose units are heads, are not this module's business and are skipped.

>>> import torch, torch.nn as nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.ReLU(),
...                     nn.Linear(8, 3))
>>> problems = removal_problems(net, ["0", "2", "4"], torch.randn(2, 4))
>>> sorted(problems)
['0', '4']
>>> problems["0"].kind
'its units reach a consumer through an op with f(0) != 0'
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from bayesprune.dependency import (
    ZEROABLE,
    Graph,
    dependency_graph,
    eval_outputs,
    frozen,
    out_group,
    prune_groups,
    surely_coupled,
    zero_out_channels,
)
from bayesprune.errors import BayesPruneError, UnsupportedError
from bayesprune.heads import is_head_layer
from bayesprune.priors.group_ties import group_tiles, is_grouped, tied_units

__all__ = ["Reason", "removal_problems"]

NOT_RUN = (
    "not called by the forward pass in eval mode on the example input (an auxiliary head, or "
    "a layer whose weight is read directly, as in F.linear(x, layer.weight))"
)
NO_PRUNER = "torch-pruning cannot slice its output units"
MIXING = "its units are coupled to a module that mixes or normalises channels"
PARAMETER = "its units are coupled to a bare nn.Parameter (a class token, a position embedding)"
UNZEROABLE = "its units are coupled to a module whose channels cannot be zeroed"
OUTPUT = "its units are outputs of the network"
UNTRACED = "its channels pass through an op whose channel mapping torch-pruning cannot compute"
TP_FAILS = "torch-pruning fails on its channels"
GROUPED = "its units are channels of a grouped convolution that tied gates cannot keep balanced"
NONZERO = "its units reach a consumer through an op with f(0) != 0"
CHANGES = "removing its units changes the network's output on the example input"
NO_TRACE = "torch-pruning cannot trace the network"

#: torch-pruning node names (autograd functions) of ops that map 0 to something else
_NONZERO_AT_0 = (
    "SigmoidBackward",
    "HardsigmoidBackward",
    "SoftplusBackward",
    "ExpBackward",
    "Exp2Backward",
    "CosBackward",
    "CoshBackward",
    "LogBackward",
    "ReciprocalBackward",
    "SoftmaxBackward",
    "LogSoftmaxBackward",
    "RsubBackward",
    "ErfcBackward",
)
_MIXERS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.MultiheadAttention,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.RNNBase,
)
#: modules that map a zero channel to a zero channel and are sliced with it
_PASS_ZERO = (nn.PReLU,)


class Reason(str):
    """Why a layer's units cannot be removed exactly: the message, and its :attr:`kind`
    (the same for every layer failing the same way, naming no module)."""

    kind: str

    def __new__(cls, kind: str, detail: str = "") -> Reason:
        obj = super().__new__(cls, f"{kind} ({detail})" if detail else kind)
        obj.kind = kind
        return obj


def removal_problems(
    module: nn.Module,
    layer_names: list[str],
    example_input: Any,
    *,
    trial: bool = True,
) -> dict[str, Reason]:
    """``{layer: reason}`` for every layer of ``layer_names`` whose output units cannot be
    removed exactly (see the module docstring); layers not listed can. The module is not
    changed: the graph is traced and the trial made on a deep copy.

    :param module: the user's network.
    :param layer_names: candidate layers (Linear/Conv); attention layers are skipped.
    :param example_input: one input batch, as the network takes it.
    :param trial: also make the trial removal (the backstop for what the graph cannot show).
    """
    names = [n for n in layer_names if not is_head_layer(module.get_submodule(n))]
    if not names:
        return {}
    try:
        work, x, dg = _traced_copy(module, example_input, double=True)
    except UnsupportedError:
        try:  # float64 is not available everywhere (MPS) nor taken by every op
            work, x, dg = _traced_copy(module, example_input, double=False)
        except UnsupportedError as e:
            return {n: Reason(NO_TRACE, str(e)) for n in names}
    double = x is not example_input
    problems: dict[str, Reason] = {}
    groups: dict[str, Any] = {}
    grouped: list[str] = []
    with frozen(dg):
        for name in names:
            reason, group = _static(dg, work, name)
            if reason is not None:
                problems[name] = reason
                continue
            groups[name] = group
            if any(is_grouped(item.dep.target.module) for item in group.items):
                grouped.append(name)
    tiles = _tiles(module, grouped, example_input, problems)
    candidates = [n for n in names if n not in problems]
    if trial and candidates:
        bundles = _bundles(dg, work, candidates, groups, tiles)
        if not _trial_passes(work, dg, bundles, x):
            _bisect(module, example_input, bundles, problems, double=double)
    return {n: problems[n] for n in layer_names if n in problems}


# --- the graph ------------------------------------------------------------------------
def _static(dg: Graph, work: nn.Module, name: str) -> tuple[Reason | None, Any]:
    """The reason the graph shows for layer ``name``, else ``None`` and its full group."""
    layer = work.get_submodule(name)
    if layer not in dg.module2node:
        return Reason(NOT_RUN), None
    pruner = dg.get_pruner_of_module(layer)
    n = dg.get_out_channels(layer) if pruner is not None else None
    if not n:
        return Reason(NO_PRUNER), None
    reached = surely_coupled(dg, layer)
    reason = _coupling_problem(dg, reached)
    if reason is not None:  # found without indices (which can grow without end)
        return reason, None
    try:
        group = out_group(dg, layer, list(range(n)))
    except UnsupportedError as e:
        return Reason(TP_FAILS, str(e)), None
    nodes = [(item.dep.target, item.dep.handler) for item in group.items]
    reason = _coupling_problem(dg, nodes) or _nonzero_path(dg, group)
    return reason, group


def _coupling_problem(dg: Graph, nodes: list[tuple[Any, Any]]) -> Reason | None:
    """The first problem among coupled ``(node, pruning function)``."""
    for node, fn in nodes:
        m = node.module
        if node in dg.untraced:
            return Reason(UNTRACED, f"{node.name}: {dg.untraced[node]}")
        if isinstance(m, nn.Parameter):
            return Reason(PARAMETER, repr(dg._param_to_name.get(m, "?")))
        if node.type == tp.ops.OPTYPE.OUTPUT or (
            not node.outputs and dg.is_out_channel_pruning_fn(fn)
        ):  # an output op, or a module whose output is the network's
            return Reason(OUTPUT)
        if not isinstance(m, nn.Module) or type(m).__module__ == tp.ops.__name__:
            continue  # torch-pruning's own op nodes
        if type(m) in dg.CUSTOMIZED_PRUNERS or isinstance(m, (*ZEROABLE, *_PASS_ZERO)):
            continue
        where = f"{dg._module2name.get(m, '?')!r} ({type(m).__name__})"
        if isinstance(m, _MIXERS):
            return Reason(MIXING, where)
        if any(True for _ in m.parameters(recurse=False)):
            return Reason(UNZEROABLE, where)
    return None


def _op_name(node: Any) -> str:
    fn = getattr(node, "grad_fn", None)
    return fn.name() if fn is not None and hasattr(fn, "name") else ""


def _nonzero_path(dg: Graph, group: Any) -> Reason | None:
    """An op with ``f(0) != 0`` between a coupled unit and a consumer that reads it, with no
    product by a coupled (zeroed) channel in between."""
    starts = [
        item.dep.target
        for item in group.items
        if dg.is_out_channel_pruning_fn(item.dep.handler)
        and isinstance(item.dep.target.module, ZEROABLE)
    ]
    seen: set[tuple[Any, str]] = set()
    stack = [(node, "") for node in starts]
    while stack:
        node, op = stack.pop()
        for nxt in node.outputs:
            m, state = nxt.module, op
            if isinstance(m, ZEROABLE):
                zeroed = isinstance(m, nn.modules.batchnorm._BatchNorm) or (
                    tp.ops.module2type(m) == tp.ops.OPTYPE.DEPTHWISE_CONV
                )
                if not zeroed:  # a consumer: reads the unit's channel, which is cut out
                    if state:
                        where = dg._module2name.get(m, type(m).__name__)
                        return Reason(NONZERO, f"{state} before {where!r}")
                    continue
                state = ""  # coupled and zeroed: its output channel is 0
            elif nxt.type == tp.ops.OPTYPE.OUTPUT:
                continue
            else:
                name = _op_name(nxt)
                if name.startswith(_NONZERO_AT_0):
                    state = name.removesuffix("0").removesuffix("Backward")
                elif name.startswith("MulBackward") and len(nxt.inputs) > 1:
                    state = ""  # times a coupled channel, zeroed too
            if (nxt, state) not in seen:
                seen.add((nxt, state))
                stack.append((nxt, state))
    return None


def _tiles(
    module: nn.Module, grouped: list[str], example_input: Any, problems: dict[str, Reason]
) -> dict[str, int]:
    """Units per gate of the layers tied across a grouped conv's groups; the layers no tying
    can keep balanced get a reason."""
    if not grouped:
        return {}
    try:
        return group_tiles(module, grouped, example_input)
    except Exception:  # one at a time, to say which layers
        pass
    tiles: dict[str, int] = {}
    for name in grouped:
        try:
            tiles.update(group_tiles(module, [name], example_input))
        except BayesPruneError as e:
            problems[name] = Reason(GROUPED, str(e))
        except Exception as e:
            problems[name] = Reason(TP_FAILS, f"{type(e).__name__}: {e}")
    return tiles


# --- the trial ------------------------------------------------------------------------
Bundle = tuple[str, list[str], list[int]]  # (root layer, layers coupled to it, root units)


def _bundles(
    dg: Graph,
    work: nn.Module,
    candidates: list[str],
    groups: dict[str, Any],
    tiles: dict[str, int],
) -> list[Bundle]:
    """One unit (one gate's units) to drop per coupled set of candidate layers; coupled
    layers drop the channels the root's drop maps to, as ``extract``'s coupling rule needs."""
    name_of = {m: n for n, m in work.named_modules()}
    done: set[str] = set()
    bundles: list[Bundle] = []
    for name in candidates:
        if name in done:
            continue
        n = dg.get_out_channels(work.get_submodule(name))
        tile = tiles.get(name, 1)
        period = n // tile
        done.add(name)
        if period < 2:
            continue  # one gate: dropping it drops every unit
        drop = tied_units(torch.tensor([period - 1]), period, tile).tolist()
        coupled = []
        for item in groups[name].items:
            other = name_of.get(item.dep.target.module)
            if other in done or other not in candidates:
                continue
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                coupled.append(other)
                done.add(other)
        bundles.append((name, coupled, drop))
    return bundles


def _trial_passes(work: nn.Module, dg: Graph, bundles: list[Bundle], x: Any) -> bool:
    """Drop the bundles' units from ``work`` (consumed): collapsed vs cut-down output."""
    if not bundles:
        return True
    try:
        with frozen(dg):
            groups = [out_group(dg, work.get_submodule(root), drop) for root, _, drop in bundles]
            for group in groups:
                zero_out_channels(dg, group, who="sparsify")
        before = eval_outputs(work, x)
        prune_groups(dg, groups, who="sparsify")
        after = eval_outputs(work, x)
    except Exception:  # a shape error after slicing is a failed trial too
        return False
    return _same(before, after)


def _traced_copy(module: nn.Module, x: Any, *, double: bool) -> tuple[nn.Module, Any, Graph]:
    """A deep copy of ``module`` and its dependency graph -- in float64 with ``double``, so
    that the trial tells a changed output from float32 rounding (amplified to 1e-3 by deep
    random networks) -- and the example input it was traced on."""
    work = copy.deepcopy(module)
    if double:
        try:
            work = work.double()
            x = torch.utils._pytree.tree_map(
                lambda t: t.double() if isinstance(t, Tensor) and t.is_floating_point() else t, x
            )
        except (RuntimeError, TypeError) as e:
            raise UnsupportedError(f"no float64 copy: {e}") from e
    return work, x, dependency_graph(work, x, who="sparsify")


def _bisect(
    module: nn.Module,
    x: Any,
    bundles: list[Bundle],
    problems: dict[str, Reason],
    *,
    double: bool,
) -> None:
    """Find the bundles whose removal changes the output, each trial on a fresh copy."""
    by_root = {root: (root, coupled, drop) for root, coupled, drop in bundles}

    def trial(roots: list[str]) -> bool:
        work, x_used, dg = _traced_copy(module, x, double=double)
        return _trial_passes(work, dg, [by_root[r] for r in roots], x_used)

    members = {root: [root, *coupled] for root, coupled, _ in bundles}
    _search(list(by_root), trial, members, problems)


def _search(
    roots: list[str],
    trial: Callable[[list[str]], bool],
    members: dict[str, list[str]],
    problems: dict[str, Reason],
) -> None:
    """``roots`` fail together: bisect to the ones failing alone (if two halves pass apart
    but not together, the whole set is blamed)."""
    if len(roots) == 1:
        for name in members[roots[0]]:
            problems[name] = Reason(CHANGES)
        return
    half = len(roots) // 2
    parts = [roots[:half], roots[half:]]
    failing = [p for p in parts if not trial(p)]
    if not failing:
        for root in roots:
            for name in members[root]:
                problems[name] = Reason(CHANGES, "together with " + ", ".join(roots))
        return
    for part in failing:
        _search(part, trial, members, problems)


def _same(before: list[Tensor], after: list[Tensor]) -> bool:
    if len(before) != len(after):
        return False
    for a, b in zip(before, after, strict=True):
        if a.shape != b.shape:
            return False
        if not a.is_floating_point():
            continue
        rtol = 1e-7 if a.dtype == torch.float64 else 1e-4  # float64: a change, not rounding
        if not float((a - b).abs().max()) <= rtol * (1.0 + float(a.abs().max())):
            return False
    return True
