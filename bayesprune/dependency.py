"""One dependency graph: which channels of a network are coupled, traced once per call site.

Every part of bayesprune that asks which channels go together -- the removability check of
:func:`~bayesprune.sparsify`, the gate priors' prices, post-activation gates, ``extract``,
live removal -- builds torch-pruning's ``DependencyGraph`` here, with
:func:`dependency_graph`. Three things differ from building it directly:

- **Index mappings are computed op by op.** torch-pruning works out how channel indices
  map through concatenations, splits, reshapes and slices with a shape inference that
  fails on some networks (a channel shuffle, a concatenation on the last dimension).
  Where it raises for one op, or gives up at its recursion limit, the op is recorded in
  :attr:`Graph.untraced` and the rest of the graph is built: a layer whose channels pass
  through such an op cannot be sliced safely (:func:`untraced_ops` names them).
- **Groups are reused.** torch-pruning recomputes every index mapping of the whole graph
  at each ``get_pruning_group`` call (quadratic in the number of concatenations: minutes
  on a DenseNet-201). Inside ``with frozen(dg):`` the mappings are computed once and each
  group is computed once; nothing may be pruned inside the block.
- **Custom pruners** registered with :func:`register_pruner` are passed to every graph:
  torch-pruning's extension point for a module type it cannot see through.

:func:`prune_groups` removes the channels of several groups in one pass, each module
sliced once with the union of its indices (all in the unpruned network's indexing), and
:func:`zero_out_channels` writes the collapsed model's zeros for one group.

>>> import torch, torch.nn as nn
>>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3))
>>> dg = dependency_graph(net, torch.zeros(1, 1, 8, 8))
>>> with frozen(dg):
...     group = out_group(dg, net[0], [1, 2])
>>> sorted(type(item.dep.target.module).__name__ for item in group.items)
['BatchNorm2d', 'Conv2d', 'Conv2d', '_ElementWiseOp']
>>> prune_groups(dg, [group])
>>> net[0].out_channels, net[1].num_features, net[3].in_channels
(2, 2, 2)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor
from torch_pruning.dependency import index_mapping as _tp_index_mapping
from torch_pruning.pruner.function import BasePruningFunc

from bayesprune.errors import BayesPruneError, ConfigError, UnsupportedError

__all__ = [
    "Graph",
    "dependency_graph",
    "frozen",
    "out_group",
    "prune_groups",
    "register_pruner",
    "registered_pruners",
    "surely_coupled",
    "unregister_pruner",
    "untraced_ops",
    "zero_out_channels",
]

#: modules whose dropped channels the collapsed model zeroes in their parameters
ZEROABLE = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)

#: normalisations over channels: a zero channel changes the others, with or without parameters
_MIXING = (nn.LayerNorm, nn.GroupNorm)

#: torch-pruning's op types whose index mapping its shape inference computes
_MAPPED = {
    tp.ops.OPTYPE.CONCAT,
    tp.ops.OPTYPE.SPLIT,
    tp.ops.OPTYPE.RESHAPE,
    tp.ops.OPTYPE.UNBIND,
    tp.ops.OPTYPE.EXPAND,
    tp.ops.OPTYPE.SLICE,
}

_PRUNERS: dict[type, BasePruningFunc] = {}


def register_pruner(module_type: type, pruner: BasePruningFunc) -> None:
    """Teach every dependency graph bayesprune builds how to slice ``module_type``.

    torch-pruning traces a network through the autograd graph and treats a module type it
    has no pruner for as an element-wise op -- or, if it owns parameters torch-pruning does
    not know, couples them as bare parameters. A pruner (a subclass of
    ``torch_pruning.pruner.BasePruningFunc`` with ``prune_out_channels``,
    ``prune_in_channels``, ``get_out_channels`` and ``get_in_channels``; set
    ``prune_in_channels = prune_out_channels`` when the module's inputs and outputs are the
    same channels) makes the module a node of its own that is sliced with the layers around
    it. The module's sub-modules are then not traced. The collapsed model does not zero a
    custom module's parameters: register modules that map a zero channel to a zero channel
    (a per-channel scale, an activation with learned slopes); :func:`~bayesprune.sparsify`
    checks that removal stays exact on its example input.

    :param module_type: an ``nn.Module`` subclass.
    :param pruner: an instance of a ``BasePruningFunc`` subclass.
    :raises UnsupportedError: when either is not of those types.

    >>> from torch_pruning.pruner.function import BasePruningFunc
    >>> class Scale(nn.Module):
    ...     def __init__(self, n):
    ...         super().__init__()
    ...         self.s = nn.Parameter(torch.ones(n))
    ...     def forward(self, x):
    ...         return x * self.s
    >>> class ScalePruner(BasePruningFunc):
    ...     def prune_out_channels(self, layer, idxs):
    ...         keep = [i for i in range(len(layer.s)) if i not in set(idxs)]
    ...         layer.s = nn.Parameter(layer.s.data[keep])
    ...         return layer
    ...     prune_in_channels = prune_out_channels
    ...     def get_out_channels(self, layer):
    ...         return len(layer.s)
    ...     get_in_channels = get_out_channels
    >>> register_pruner(Scale, ScalePruner())
    >>> net = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Linear(4, 2))
    >>> dg = dependency_graph(net, torch.zeros(1, 3))
    >>> prune_groups(dg, [out_group(dg, net[0], [0])])
    >>> net[1].s.shape, net[2].in_features
    (torch.Size([3]), 3)
    >>> unregister_pruner(Scale)
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise UnsupportedError(
            f"register_pruner: module_type must be an nn.Module subclass, got {module_type!r}"
        )
    if not isinstance(pruner, BasePruningFunc):
        raise UnsupportedError(
            "register_pruner: pruner must be an instance of a torch_pruning "
            f"BasePruningFunc subclass, got {type(pruner).__name__}"
        )
    _PRUNERS[module_type] = pruner


def unregister_pruner(module_type: type) -> None:
    """Forget the pruner registered for ``module_type`` (nothing if there is none)."""
    _PRUNERS.pop(module_type, None)


def registered_pruners() -> dict[type, BasePruningFunc]:
    """A copy of ``{module type: pruner}`` registered with :func:`register_pruner`."""
    return dict(_PRUNERS)


class _OneNode:
    """The graph as torch-pruning's index mapping update sees it, with one node only."""

    def __init__(self, graph: Graph, module: Any, node: Any) -> None:
        self._graph = graph
        self.module2node = {module: node}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graph, name)


class Graph(tp.DependencyGraph):
    """torch-pruning's ``DependencyGraph`` with op-by-op index mappings and reusable groups
    (see the module docstring); build it with :func:`dependency_graph`."""

    def __init__(self) -> None:
        super().__init__()
        #: ops whose channel index mapping could not be computed, with why
        self.untraced: dict[Any, str] = {}
        self._frozen: dict[tuple, Any] | None = None
        self._frozen_depth = 0
        self._stamp: tuple | None = None
        #: indices produced by index mappings for the group being computed, and the most
        #: allowed (set at the first group)
        self.mapped = 0
        self.max_mapped: int | None = None
        #: groups computed so far
        self.groups = 0

    def update_mappings(self) -> None:
        """torch-pruning's index mapping update, one op at a time: an op where it raises or
        gives up is recorded in :attr:`untraced` instead of failing the whole graph."""
        if self._frozen is not None:
            return
        self._stamp = self._shapes()
        for module, node in list(self.module2node.items()):
            if node.type not in _MAPPED:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    _tp_update_index_mapping(_OneNode(self, module, node))
                except Exception as e:  # torch-pruning's shape inference on this op
                    self.untraced[node] = f"{type(e).__name__}: {e}"
            for w in caught:
                if "recursive depth" in str(w.message):
                    self.untraced.setdefault(
                        node, "torch-pruning's shape inference reached its recursion limit"
                    )
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

        self._count_mappings()

    def _count_mappings(self) -> None:
        for node in self.module2node.values():
            for dep in node.dependencies:
                for i, mapping in enumerate(dep.index_mapping):
                    if mapping is not None and not isinstance(mapping, _Counted):
                        dep.index_mapping[i] = _Counted(mapping, self)

    def get_pruning_group(self, module: nn.Module, pruning_fn: Any, idxs: Sequence[int]) -> Any:
        """torch-pruning's group, reused inside :func:`frozen`; its failures are raised as
        :class:`~bayesprune.errors.UnsupportedError` naming the module."""
        key = (module, pruning_fn, tuple(int(i) for i in idxs))
        if self._frozen is not None and key in self._frozen:
            return self._frozen[key]
        self.mapped = 0
        self.groups += 1
        if self.max_mapped is None:
            self.max_mapped = max(MIN_MAPPED, MAPPED_PER_CHANNEL * self._channels())
        try:
            group = super().get_pruning_group(module, pruning_fn, idxs)
        except BayesPruneError:
            raise
        except _Merged:
            raise UnsupportedError(
                f"torch-pruning maps several channels of {self._name(module)} onto one channel "
                "further on (the channels are merged by a reshape, or it misreads one)"
            ) from None
        except _TooLarge:
            raise UnsupportedError(
                f"torch-pruning's coupling of the channels of {self._name(module)} does not "
                f"settle: index mappings through reshapes produced over {self.max_mapped} "
                f"indices, or one was passed over {MAX_PASSES} times (it misreads a reshape)"
            ) from None
        except Exception as e:
            raise UnsupportedError(
                f"torch-pruning cannot tell which channels are coupled to those of "
                f"{self._name(module)} ({type(e).__name__}: {e})"
            ) from e
        if self._frozen is not None:
            self._frozen[key] = group
        return group

    def _shapes(self) -> tuple:
        """The shapes of every parameter of the graph's modules: they change when it is
        pruned, and with them the index mappings."""
        return tuple(
            tuple(p.shape)
            for m in self.module2node
            for p in (m.parameters(recurse=False) if isinstance(m, nn.Module) else (m,))
        )

    def fresh(self) -> bool:
        """Whether the index mappings are those of the network as it is now."""
        return self._stamp is not None and self._stamp == self._shapes()

    def _channels(self) -> int:
        """Input plus output channels of every module of the graph."""
        total = 0
        for m in self.module2node:
            if self.get_pruner_of_module(m) is None:
                continue
            with contextlib.suppress(Exception):  # e.g. a pruner that cannot count
                total += (self.get_in_channels(m) or 0) + (self.get_out_channels(m) or 0)
        return total

    def _name(self, module: Any) -> str:
        name = self._module2name.get(module)
        return repr(name) if name else type(module).__name__


class _TooLarge(Exception):
    pass


class _Merged(Exception):
    pass


#: a group whose index mappings produce more indices than this many per channel of the
#: network (or ``MIN_MAPPED``) is given up: it grows without end where torch-pruning's shape
#: inference misreads a reshape. Real groups stay below 2 (VGG-16, AlexNet, DenseNet-201).
MAPPED_PER_CHANNEL = 10
MIN_MAPPED = 100_000


#: a group that passes one index mapping more often than this is given up too (real
#: groups pass each at most a few times: 3 in VGG-16, 8 in Swin-T)
MAX_PASSES = 64


class _Counted:
    """An index mapping that counts the indices it produces, and its own calls, for the
    group being computed on its graph."""

    def __init__(self, inner: Any, graph: Graph) -> None:
        self.inner = inner
        self.graph = graph
        self.calls = (0, 0)  # (group number, calls in that group)

    def __call__(self, idxs: Any) -> Any:
        group, calls = self.calls
        calls = calls + 1 if group == self.graph.groups else 1
        self.calls = (self.graph.groups, calls)
        out = self.inner(idxs)
        self.graph.mapped += len(out)
        if self.graph.mapped > self.graph.max_mapped or calls > MAX_PASSES:
            raise _TooLarge
        if len(out) > 1 and len({getattr(i, "idx", i) for i in out}) < len(out):
            raise _Merged  # several of the root's channels on one channel: not a unit each
        return out


_tp_update_index_mapping = _tp_index_mapping.update_index_mapping


def _update_index_mapping(graph: Any) -> None:
    if isinstance(graph, Graph):
        graph.update_mappings()
    else:
        _tp_update_index_mapping(graph)


# torch-pruning calls ``index_mapping.update_index_mapping(graph)`` when it builds a graph
# and at every ``get_pruning_group``; graphs other than ours keep its own behaviour
_tp_index_mapping.update_index_mapping = _update_index_mapping


def dependency_graph(module: nn.Module, example_input: Any, who: str = "extract") -> Graph:
    """torch-pruning's dependency graph of ``module``, traced once on ``example_input`` in
    eval mode (the module's mode is restored, also under ``torch.inference_mode``), with
    the pruners of :func:`register_pruner`; ``who`` names the caller in errors.

    :raises ConfigError: without an example input.
    :raises UnsupportedError: when torch-pruning cannot trace the network (the message
        says what it raised).
    """
    if example_input is None:
        raise ConfigError(
            f"{who}: removing units needs an example input to trace the network; pass "
            "example_input= (a BayesianNet records one when it is fitted)"
        )
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            x = example_input
            if isinstance(x, Tensor) and x.is_inference():
                x = x.clone()
            return Graph().build_dependency(
                module,
                example_inputs=x,
                customized_pruners=dict(_PRUNERS) or None,
                verbose=False,
            )
    except BayesPruneError:
        raise
    except Exception as e:
        raise UnsupportedError(
            f"{who}: torch-pruning cannot trace {type(module).__name__} on the example input "
            f"({type(e).__name__}: {e})"
        ) from e
    finally:
        module.train(was_training)


@contextlib.contextmanager
def frozen(dg: Graph) -> Iterator[Graph]:
    """Within the block, ``dg``'s index mappings are those of the network as it is at its
    start (computed once) and every group is computed once. Prune nothing inside it."""
    if dg._frozen_depth == 0:
        if not dg.fresh():
            dg.update_mappings()
        dg._frozen = {}
    dg._frozen_depth += 1
    try:
        yield dg
    finally:
        dg._frozen_depth -= 1
        if dg._frozen_depth == 0:
            dg._frozen = None


def out_group(dg: tp.DependencyGraph, layer: nn.Module, idxs: Sequence[int]) -> Any:
    """The pruning group of output channels ``idxs`` of ``layer``: everything coupled to
    them, each module with the indices it loses (its own indexing) and the layer's
    channels they come from (``item.root_idxs``)."""
    return dg.get_pruning_group(layer, dg.get_pruner_of_module(layer).prune_out_channels, idxs)


def _keeps_all(mapping: Any) -> bool:
    """Whether an index mapping passes every index on (to one index or more)."""
    m = mapping.inner if isinstance(mapping, _Counted) else mapping
    if m is None or isinstance(m, _tp_index_mapping._FlattenIndexMapping):
        return True
    if isinstance(m, _tp_index_mapping._ConcatIndexMapping):
        return not m.reverse
    if isinstance(m, (_tp_index_mapping._SplitIndexMapping, _tp_index_mapping._SliceIndexMapping)):
        return m.reverse
    return False


def surely_coupled(dg: tp.DependencyGraph, layer: nn.Module) -> list[tuple[Any, Any]]:
    """``(node, pruning function)`` of everything surely in the group of ``layer``'s
    output channels, found without computing indices: the group's dependencies are followed
    only where every index passes on (not out of a concatenation, into a split or through a
    slice, where each branch keeps part of them). Cheap, linear in the graph, and never
    stuck where :meth:`Graph.get_pruning_group` could grow without end.

    >>> net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    >>> dg = dependency_graph(net, torch.zeros(1, 3))
    >>> names = {m: n for n, m in net.named_modules()}
    >>> sorted(names[node.module] for node, _ in surely_coupled(dg, net[0]) if node.module in names)
    ['0', '1', '2']
    """
    node = dg.module2node[layer]
    fn = dg.get_pruner_of_module(layer).prune_out_channels
    if tp.ops.module2type(layer) == tp.ops.OPTYPE.DEPTHWISE_CONV:
        fn = tp.pruner.function.prune_depthwise_conv_out_channels
    order = [(node, fn)]  # breadth first: the nearest first
    seen = set(order)
    for node, fn in order:
        for dep in node.dependencies:
            if not dep.is_triggered_by(fn) or not all(map(_keeps_all, dep.index_mapping)):
                continue
            state = (dep.target, dep.handler)
            if state not in seen:
                seen.add(state)
                order.append(state)
    return order


def untraced_ops(dg: tp.DependencyGraph, group: Any) -> list[str]:
    """Names of the ops of ``group`` whose index mapping torch-pruning could not compute
    (:attr:`Graph.untraced`), with why: slicing through them would be wrong."""
    untraced = getattr(dg, "untraced", {})
    return [
        f"{item.dep.target.name} ({untraced[item.dep.target]})"
        for item in group.items
        if item.dep.target in untraced
    ]


def _passes_zero(dg: tp.DependencyGraph, m: nn.Module) -> bool:
    """Modules that map a zero channel to a zero channel: their parameters need no zeros."""
    return isinstance(m, nn.PReLU) or type(m) in dg.CUSTOMIZED_PRUNERS


@torch.no_grad()
def zero_out_channels(dg: tp.DependencyGraph, group: Any, who: str = "extract") -> None:
    """Zero what produces the channels ``group`` removes (the collapsed model): the weight
    rows and biases of coupled Linear/Conv layers, the channels of BatchNorms (with their
    running means, so they map 0 to 0) and of bare parameters coupled to them.

    :raises UnsupportedError: when a coupled module mixes channels or is not one of those
        (LayerNorm, GroupNorm, attention, ...): zeroing cannot make removal exact there.
    """
    for item in group.items:
        if not dg.is_out_channel_pruning_fn(item.dep.handler):
            continue
        m = item.dep.target.module
        if isinstance(m, nn.Parameter):
            dim = item.dep.target.pruning_dim
            idx = torch.as_tensor(list(item.idxs), dtype=torch.long, device=m.device)
            m.data.index_fill_(dim, idx, 0.0)
            continue
        if not isinstance(m, nn.Module) or _passes_zero(dg, m):
            continue
        is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
        owns = any(True for _ in m.parameters(recurse=False))
        if isinstance(m, _MIXING) or (owns and not isinstance(m, ZEROABLE)):
            root = group.items[0].dep.target.module
            raise UnsupportedError(
                f"{who}: cannot remove units of layer {dg._module2name.get(root, '?')!r}: the "
                f"dropped channels of the coupled {type(m).__name__} "
                f"{dg._module2name.get(m, '?')!r} cannot be zeroed (it mixes channels, or is not "
                "a layer bayesprune knows); supported: Linear, Conv, BatchNorm"
            )
        if not isinstance(m, ZEROABLE):
            continue  # parameter-free ops (ReLU, pooling, add, ...) pass zeros through
        tensors = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
        if not tensors:
            continue
        idx = torch.as_tensor(list(item.idxs), dtype=torch.long, device=tensors[0].device)
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            m.weight.index_fill_(1, idx, 0.0)
        elif m.weight is not None:
            m.weight.index_fill_(0, idx, 0.0)
        if m.bias is not None:
            m.bias.index_fill_(0, idx, 0.0)
        if is_bn and m.running_mean is not None:
            # BN without affine parameters maps 0 to -mean/std: make it map 0 to 0
            m.running_mean.index_fill_(0, idx, 0.0)


def prune_groups(dg: tp.DependencyGraph, groups: Sequence[Any], who: str = "extract") -> None:
    """Remove the channels of every group in one pass: each coupled module is sliced once,
    with the union of its indices over the groups. All groups must have been computed on
    the same, still unpruned graph (their indices are in its indexing); the graph is of no
    further use afterwards.

    :raises UnsupportedError: naming the module and the root layers, when torch-pruning
        fails to slice it.
    """
    names = {m: n for n, m in dg.model.named_modules()}
    merged: dict[tuple[int, Any], tuple[Any, set[int], list[str]]] = {}
    for group in groups:
        root = group.items[0].dep.target
        for item in group.items:
            key = (id(item.dep.target), item.dep.handler)
            dep, idxs, roots = merged.setdefault(key, (item.dep, set(), []))
            idxs.update(int(i) for i in item.idxs)
            roots.append(names.get(root.module, root.name))
    if not merged:
        return
    union = tp.dependency.Group()
    union._DG = dg
    for dep, idxs, _ in merged.values():
        union.add_dep(dep, sorted(idxs))
    for dep, idxs in union.items:
        if dep.target.type == tp.ops.OPTYPE.PARAMETER:
            continue
        try:
            dep(idxs)
        except BayesPruneError:
            raise
        except Exception as e:
            roots = sorted(set(merged[(id(dep.target), dep.handler)][2]))
            raise UnsupportedError(
                f"{who}: torch-pruning failed to slice {dep.target.name} while removing units "
                f"of {roots} ({type(e).__name__}: {e})"
            ) from e
    params = tp.dependency.Group()
    params._DG = dg
    for dep, idxs in union.items:
        if dep.target.type == tp.ops.OPTYPE.PARAMETER:
            params.add_dep(dep, idxs)
    if len(params):  # torch-pruning replaces the parameter on its owner module
        params.prune(record_history=False)


@torch.no_grad()
def eval_outputs(module: nn.Module, example_input: Any) -> list[Tensor]:
    """Every tensor ``module`` returns on ``example_input`` in eval mode (the mode is
    restored), called the way the dependency graph traced it (a dict as keywords, a tuple
    as positional arguments), detached copies.

    >>> [t.shape for t in eval_outputs(nn.Linear(3, 2), torch.zeros(4, 3))]
    [torch.Size([4, 2])]
    """
    was_training = module.training
    module.eval()
    try:
        if isinstance(example_input, dict):
            out = module(**example_input)
        elif isinstance(example_input, (tuple, list)):
            out = module(*example_input)
        else:
            out = module(example_input)
    finally:
        module.train(was_training)
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [t.detach().clone() for t in leaves if isinstance(t, Tensor)]
