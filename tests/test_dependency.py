"""The one dependency graph: op-by-op index mappings, reused groups, one-pass pruning,
custom pruners."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.dependency import index_mapping
from torch_pruning.pruner.function import BasePruningFunc

import bayesprune.dependency as dep
from bayesprune import sparsify
from bayesprune.dependency import (
    dependency_graph,
    frozen,
    out_group,
    prune_groups,
    register_pruner,
    surely_coupled,
    unregister_pruner,
    untraced_ops,
    zero_out_channels,
)
from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.priors import UnitGates
from bayesprune.pruning import KeepSet, extract, masked_copy


class Dense(nn.Module):
    """Two convs concatenated, read by a third (a DenseNet-style block)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 5, 1)
        self.c = nn.Conv2d(9, 6, 3)
        self.fc = nn.Linear(6 * 2 * 2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.fc(torch.relu(self.c(h)).flatten(1))


X = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def test_without_an_example_input_or_on_a_failing_forward_the_error_is_ours():
    with pytest.raises(ConfigError, match="example input"):
        dependency_graph(Dense(), None)

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(UnsupportedError, match=r"cannot trace Broken.*RuntimeError: boom"):
        dependency_graph(Broken(), X)


def test_groups_are_computed_once_inside_frozen_and_afresh_outside():
    net = Dense()
    dg = dependency_graph(net, X)
    with frozen(dg):
        first = out_group(dg, net.a, [0, 1])
        assert out_group(dg, net.a, [0, 1]) is first
        with frozen(dg):  # nested: still the same cache
            assert out_group(dg, net.a, [0, 1]) is first
    assert out_group(dg, net.a, [0, 1]) is not first


def test_frozen_computes_the_index_mappings_once(monkeypatch):
    net = Dense()
    dg = dependency_graph(net, X)
    calls = []
    original = dep._tp_update_index_mapping
    monkeypatch.setattr(dep, "_tp_update_index_mapping", lambda g: calls.append(1) or original(g))
    ops = sum(node.type in dep._MAPPED for node in dg.module2node.values())
    assert ops == 2  # the concatenation and the flatten
    with frozen(dg):
        for layer in (net.a, net.b, net.c, net.a):
            out_group(dg, layer, [0])
    assert calls == []  # the build's mappings are those of the network as it is
    out_group(dg, net.a, [1])
    out_group(dg, net.b, [1])
    assert len(calls) == 2 * ops  # outside frozen: a pass per group, as torch-pruning does
    out_group(dg, net.a, [3]).prune(record_history=False)  # torch-pruning's own surgery
    calls.clear()
    with frozen(dg):  # the network changed: one pass, then none
        for layer in (net.a, net.b, net.c):
            out_group(dg, layer, [0])
    assert len(calls) == ops


def test_prune_groups_slices_each_module_once_in_the_unpruned_indexing():
    torch.manual_seed(0)
    net = Dense().eval()
    dg = dependency_graph(net, X)
    with frozen(dg):
        groups = [out_group(dg, net.a, [0, 3]), out_group(dg, net.b, [1])]
        for g in groups:
            zero_out_channels(dg, g)
    with torch.no_grad():
        before = net(X)
    prune_groups(dg, groups)
    assert (net.a.out_channels, net.b.out_channels, net.c.in_channels) == (2, 4, 6)
    with torch.no_grad():
        torch.testing.assert_close(net(X), before)


def test_an_op_whose_index_mapping_fails_is_recorded_and_the_rest_of_the_graph_built(
    monkeypatch,
):
    real = index_mapping.update_concat_index_mapping

    def failing(graph, node):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(index_mapping, "update_concat_index_mapping", failing)
    net = Dense()
    dg = dependency_graph(net, X)  # torch-pruning itself would raise here
    assert [str(v) for v in dg.untraced.values()] == ["TypeError: unsupported operand"]
    with frozen(dg):
        through = untraced_ops(dg, out_group(dg, net.a, [0]))
        fine = untraced_ops(dg, out_group(dg, net.c, [0]))
    assert len(through) == 1 and "_ConcatOp" in through[0] and "unsupported" in through[0]
    assert fine == []
    with pytest.raises(UnsupportedError, match=r"layer 'a'.*_ConcatOp.*channel mapping"):
        extract(net, {"a": KeepSet(units=torch.tensor([1, 2]), n_units=4)}, example_input=X)
    monkeypatch.setattr(index_mapping, "update_concat_index_mapping", real)
    assert not dependency_graph(Dense(), X).untraced


def test_a_group_whose_indices_grow_without_end_is_given_up(monkeypatch):
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    dg = dependency_graph(net, X)
    monkeypatch.setattr(dep, "MIN_MAPPED", 10)
    monkeypatch.setattr(dep, "MAPPED_PER_CHANNEL", 0)
    with pytest.raises(UnsupportedError, match=r"'0' does not settle"):
        out_group(dg, net[0], [0, 1])
    dg = dependency_graph(net, X)
    monkeypatch.setattr(dep, "MIN_MAPPED", 100)
    assert len(out_group(dg, net[0], [0, 1]).items) > 1  # 32 flattened features: fine


def test_graphs_built_by_torch_pruning_itself_keep_its_behaviour():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(net, example_inputs=X, verbose=False)
    assert not isinstance(dg, dep.Graph)
    group = dg.get_pruning_group(net[0], dg.get_pruner_of_module(net[0]).prune_out_channels, [1])
    linear = [i for i in group.items if i.dep.target.module is net[3]]
    assert sorted(linear[0].idxs) == list(range(16, 32))  # the flatten mapping, still there


def test_surely_coupled_stops_where_indices_split():
    net = Dense()
    dg = dependency_graph(net, X)
    names = {m: n for n, m in net.named_modules()}
    coupled = {names[n.module] for n, _ in surely_coupled(dg, net.a) if n.module in names}
    # c reads a's channels; b is only concatenated with them (not coupled)
    assert coupled == {"a", "c"}


# --- custom pruners --------------------------------------------------------------------------


class ChannelScale(nn.Module):
    """Multiplies each channel by a learned scale (a zero channel stays zero)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class ChannelScalePruner(BasePruningFunc):
    def prune_out_channels(self, layer, idxs):
        keep = [i for i in range(layer.scale.numel()) if i not in set(idxs)]
        layer.scale = nn.Parameter(layer.scale.data[keep])
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.scale.numel()

    get_in_channels = get_out_channels


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.scale = ChannelScale(6)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.scale(self.conv(x)))).mean((2, 3))


@pytest.fixture
def scale_pruner():
    register_pruner(ChannelScale, ChannelScalePruner())
    yield
    unregister_pruner(ChannelScale)


def test_without_a_pruner_a_custom_modules_parameter_is_a_bare_parameter():
    with pytest.raises(UnsupportedError, match=r"layer 'conv'.*bare nn.Parameter.*scale"):
        sparsify(Scaled(), UnitGates(), layers=["conv"], example_input=X)


def test_a_registered_pruner_makes_the_custom_module_sliceable(scale_pruner):
    net = sparsify(Scaled(), UnitGates(), example_input=X)
    assert net.layer_names == ("conv",)  # 'out' is the output layer
    keep = {"conv": KeepSet(units=torch.tensor([0, 2, 5]), n_units=6)}
    small = extract(net, keep, example_input=X)  # checks against the collapsed model
    assert small.scale.scale.shape == (3,) and small.out.in_channels == 3
    torch.testing.assert_close(small.scale.scale.data, torch.linspace(0.5, 2.0, 6)[[0, 2, 5]])
    with torch.no_grad():
        torch.testing.assert_close(small(X), masked_copy(net, keep, example_input=X)(X))


def test_register_pruner_checks_its_arguments():
    with pytest.raises(UnsupportedError, match="nn.Module subclass"):
        register_pruner("ChannelScale", ChannelScalePruner())
    with pytest.raises(UnsupportedError, match="BasePruningFunc"):
        register_pruner(ChannelScale, object())
    assert ChannelScale not in dep.registered_pruners()
