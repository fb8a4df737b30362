"""Gates tied across the groups of a grouped conv give keep-sets ``extract`` can cut: collapse
(by score, ``min_units``, budgets), budgeted fits, live removal and its exact resume, and
torchvision's ResNeXt and RegNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from conftest import Killed, kill_at_step  # noqa: I001

from bayesprune import Budget, collapse, diagnose, extract, fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.errors import ConfigError
from bayesprune.guides import MAP, MeanField
from bayesprune.guides.base import key
from bayesprune.inference import load_checkpoint
from bayesprune.priors import UnitGates
from bayesprune.priors.group_ties import is_grouped, tied_units
from bayesprune.pruning import (
    BudgetControl,
    CostModel,
    KeepSet,
    dead_units_keep,
    predict_pruning,
    remove_units,
    removed_units,
    replay_removals,
)
from bayesprune.pruning.extract import masked_copy
from bayesprune.spaces import PosteriorSpace
from tests.helpers import (
    GcdNet,
    GroupedConvNet,
    assert_same_fit,
    extracted_count,
    go,
    randomise_batchnorm,
    set_gates,
)

X = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0))
KW = {"batch_size": 16, "lr": 1e-2, "role_lr": {"gate": 0.1}, "progress": False}


@pytest.fixture(scope="module")
def data():
    """3 classes of (3, 6, 6) images: 128 train (8 batches of 16), 32 val."""
    return synthetic_classification(128, 32, 0, input_shape=(3, 6, 6), n_classes=3, seed=0)


def pair(seed: int = 0, guide: str = "map", **prior):
    torch.manual_seed(seed)
    module = randomise_batchnorm(GroupedConvNet(), torch.Generator().manual_seed(seed))
    net = sparsify(module, UnitGates(**prior), example_input=X[:1])
    return net, (MAP(net) if guide == "map" else MeanField(net, init_scale=0.05))


def set_random_thetas(net, guide, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in net.gates:
            guide.gate_probs[key(s.name)].copy_(torch.rand(s.shape, generator=gen))


def assert_whole_gates(net, keep: dict[str, KeepSet]) -> None:
    """Every tied layer keeps whole gates: all units ``p + j·period`` of a kept gate ``p``."""
    for s in net.gates:
        tile = s.meta.get("tile", 1)
        ks = keep[s.layer]
        assert ks.n_units == s.shape[0] * tile
        gates = ks.units[ks.units < s.shape[0]]
        assert ks.units.tolist() == tied_units(gates, s.shape[0], tile).tolist(), s.layer


def assert_extract_equals_masked(net, keep, x) -> nn.Module:
    small = extract(net, keep).eval()
    masked = masked_copy(net, keep).eval()
    with torch.no_grad():
        a, b = small(x), masked(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    return small


# --- collapse and extract ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_collapse_keeps_whole_gates_and_extract_equals_the_masked_and_gated_model(seed):
    net, guide = pair()
    set_random_thetas(net, guide, seed)
    keep = collapse(net, guide)
    assert_whole_gates(net, keep)
    small = assert_extract_equals_masked(net, keep, X)
    # ... and the gated model at its point estimate (no coupled layers here)
    with torch.no_grad():
        torch.testing.assert_close(small(X), net.predict(guide.point(), X))
    # the grouped conv keeps its 4 groups, each the same size
    kept = {n: keep[n].n_kept for n in ("pw", "gc")}
    assert (small.gc.groups, small.gc.in_channels, small.gc.out_channels) == (
        4,
        kept["pw"],
        kept["gc"],
    )
    assert kept["pw"] % 4 == 0 and kept["gc"] % 4 == 0


@pytest.mark.parametrize(
    "how",
    [
        {"keep": 0.5},
        {"keep": 0.3, "scope": "layer"},
        {"rule": "inclusion", "max_risk": 0.5},
    ],
)
def test_every_collapse_rule_keeps_whole_gates(how):
    net, guide = pair()
    set_random_thetas(net, guide, 7)
    keep = collapse(net, guide, **how)
    assert_whole_gates(net, keep)
    assert_extract_equals_masked(net, keep, X)
    kept = {n: k.n_kept for n, k in keep.items()}
    if how.get("scope") == "layer":  # 30% of each layer: round(0.3 * gates) gates
        assert kept == {"pw": 4, "gc": 4, "out": 2}
    elif "keep" in how:
        # round(0.5 * 25) = 12 units, best first: out 0 (1 unit), pw 0 (4), gc 0 (4); gc 1
        # would make 13
        set_gates(
            guide, {"pw": [0.9, 0.1], "gc": [0.8, 0.7, 0.2], "out": [0.95, 0.6, 0.5, 0.3, 0.05]}
        )
        keep = collapse(net, guide, **how)
        assert {n: k.units.tolist() for n, k in keep.items()} == {
            "pw": [0, 2, 4, 6],
            "gc": [0, 3, 6, 9],
            "out": [0],
        }
    else:
        assert keep["gc"].p_keep.shape == (3,)  # per gate, like the scores


@pytest.mark.parametrize("seed", range(3))
def test_a_layer_under_two_grouped_convs_keeps_gates_of_their_gcd(seed):
    torch.manual_seed(seed)
    net = sparsify(GcdNet(), UnitGates(), layers=["g1"], example_input=X[:1])
    assert net.site("g1.gate").shape == (2,)
    guide = MAP(net)
    set_gates(guide, {"g1": [0.9, 0.1] if seed % 2 else [0.1, 0.9]})
    keep = collapse(net, guide)
    assert keep["g1"].units.tolist() == ([0, 2, 4, 6, 8, 10] if seed % 2 else [1, 3, 5, 7, 9, 11])
    small = assert_extract_equals_masked(net, keep, X)
    assert (small.g1.out_channels, small.g1.groups, small.g2.in_channels) == (6, 3, 6)


def test_an_unbalanced_keep_set_is_still_refused():
    net, _ = pair()
    keep = {"pw": KeepSet(units=torch.tensor([0, 1, 2, 3, 4, 5]), n_units=8)}
    with pytest.raises(ConfigError, match="grouped convolution 'gc'"):
        extract(net, keep)


def test_min_units_keeps_whole_gates_and_zeroes_closed_ones():
    net, guide = pair()
    with torch.no_grad():
        for p in guide.gate_probs.values():
            p.fill_(0.1)  # every gate closed
        guide.gate_probs["gc/gate"][1] = 0.3  # the best of gc's closed gates
    keep = collapse(net, guide, min_units=5)  # gc: ceil(5/4) = 2 gates, 8 units
    assert_whole_gates(net, keep)
    assert keep["gc"].units.tolist() == [0, 1, 3, 4, 6, 7, 9, 10]
    assert keep["gc"].zeroed.tolist() == keep["gc"].units.tolist()  # closed: kept at 0
    assert keep["pw"].n_kept == 8 and keep["out"].n_kept == 5
    small = assert_extract_equals_masked(net, keep, X)
    assert small.gc.out_channels == 8
    with torch.no_grad():
        torch.testing.assert_close(small(X), net.predict(guide.point(), X))


def test_the_posterior_space_refuses_tied_gates():
    net, guide = pair()
    with pytest.raises(ConfigError, match=r"PosteriorSpace.*\['pw', 'gc'\].*tied"):
        PosteriorSpace(net, guide)


def test_a_forecast_of_a_tied_cut_runs_on_the_gates(data):
    net, guide = pair()
    set_random_thetas(net, guide, 3)
    keep = collapse(net, guide)
    forecast = predict_pruning(net, guide, keep, data.val, num_samples=4)
    assert 0.0 <= forecast.accuracy_pruned <= 1.0


# --- budgets -------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["units", "params", "flops"])
def test_the_cost_model_counts_the_extracted_network_exactly(metric):
    net, guide = pair(cost="mixed")
    model = CostModel(net, Budget(**{metric: 0.5}))
    dense = extracted_count(net, collapse(net, guide, threshold=-1.0), metric)
    assert model.dense == pytest.approx(dense)
    for seed in range(4):
        set_random_thetas(net, guide, seed)
        keep = collapse(net, guide)
        gates = {s.layer: int((guide.gate_probs[key(s.name)] > 0.5).sum()) for s in net.gates}
        gates = {n: max(k, 1) for n, k in gates.items()}  # min_units=1 keeps a gate
        assert model.size(gates) == pytest.approx(extracted_count(net, keep, metric) / dense)


@pytest.mark.parametrize(
    "budget", [Budget(units=0.5), Budget(flops=0.4), Budget(params=0.5), Budget(units={"gc": 0.5})]
)
def test_collapse_to_a_budget_cuts_whole_gates(budget):
    net, guide = pair(cost="mixed")
    set_random_thetas(net, guide, 1)
    with torch.no_grad():
        for p in guide.gate_probs.values():
            p.mul_(0.4).add_(0.6)  # every gate open: the budget does all the cutting
    keep = collapse(net, guide, budget=budget)
    assert_whole_gates(net, keep)
    assert_extract_equals_masked(net, keep, X)
    if budget.per_layer is not None:
        assert keep["gc"].n_kept == 4  # floor(0.5 * 3) = 1 gate of 4 units
        assert keep["pw"].n_kept == 8
    else:
        dense = extracted_count(net, collapse(net, guide, threshold=-1.0), budget.metric)
        size = extracted_count(net, keep, budget.metric) / dense
        assert size <= budget.fraction and keep.budget.final == pytest.approx(size)
        assert keep.budget.cut > 0


def test_the_smallest_budget_counts_a_whole_gate_per_tied_layer():
    net, _ = pair()
    model = CostModel(net, Budget(units=0.5))
    assert model.floors(1) == {"pw": 1, "gc": 1, "out": 1}
    assert model.floors(5) == {"pw": 2, "gc": 2, "out": 5}
    assert model.smallest() == pytest.approx((4 + 4 + 1) / 25)


def test_a_budgeted_fit_ends_within_its_budget_with_whole_gates(data):
    net, guide = pair(gamma=0.3)
    budget = Budget(units=0.5)
    fit(net, data, guide, epochs=4, budget=BudgetControl(budget, every=2, lookahead=4), **KW)
    theta = torch.cat([p.detach() for p in guide.gate_probs.values()])
    assert bool(((theta == 0) | (theta == 1)).all())
    keep = collapse(net, guide)
    assert_whole_gates(net, keep)
    assert sum(k.n_kept for k in keep.values()) <= 0.5 * 25
    small = extract(net, keep).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(data.val.x), net.predict(guide.point(), data.val.x))


# --- live removal --------------------------------------------------------------------------


def test_a_dead_tied_gate_removes_one_unit_of_every_group():
    net, guide = pair(cost="flops")
    gammas = {s.layer: s.meta["gamma"] for s in net.gates}
    with torch.no_grad():
        guide.gate_probs["pw/gate"].copy_(torch.tensor([0.0, 0.7]))
        guide.gate_probs["gc/gate"].copy_(torch.tensor([0.3, 0.0, 0.9]))
    before = net.predict(guide.point(), X)
    keep = dead_units_keep(net, guide)
    assert keep["pw"].tolist() == [1, 3, 5, 7]
    assert keep["gc"].tolist() == [0, 2, 3, 5, 6, 8, 9, 11]
    removed = remove_units(net, guide, keep)
    assert {n: u.tolist() for n, u in removed.items()} == {
        "pw": [1, 3, 5, 7],
        "gc": [0, 2, 3, 5, 6, 8, 9, 11],
    }
    gc = net.module.gc
    assert (gc.groups, gc.in_channels, gc.out_channels) == (4, 4, 8)
    assert {s.name: (s.shape, s.meta["tile"]) for s in net.gates if s.layer != "out"} == {
        "pw.gate": ((1,), 4),
        "gc.gate": ((2,), 4),
    }
    assert net.site("gc.gate").meta["gamma"] == (gammas["gc"][0], gammas["gc"][2])
    assert net.site("gc.gate_prob").meta["gamma"] == (gammas["gc"][0], gammas["gc"][2])
    assert net.site("pw.gate").meta["gamma"] == (gammas["pw"][1],)
    assert guide.gate_probs["gc/gate"].tolist() == pytest.approx([0.3, 0.9])
    torch.testing.assert_close(net.predict(guide.point(), X), before)

    # a second removal composes; a fresh net replays both
    with torch.no_grad():
        guide.gate_probs["gc/gate"][0] = 0.0
    remove_units(net, guide, dead_units_keep(net, guide))
    assert removed_units(net)["gc"].tolist() == [2, 5, 8, 11]
    fresh, g2 = pair(cost="flops")
    replay_removals(fresh, g2, removed_units(net))
    assert [(s.name, s.shape, s.meta.get("gamma")) for s in fresh.sites] == [
        (s.name, s.shape, s.meta.get("gamma")) for s in net.sites
    ]
    assert fresh.module.gc.out_channels == 4 and fresh.module.gc.groups == 4


def test_fit_removes_dead_tied_gates_and_the_rest_extracts(data):
    net, guide = pair(gamma=0.1)
    result = fit(net, data, guide, epochs=4, remove_dead=True, **KW)
    removed = {n: sum(h["removed"][n] for h in result.history) for n in ("pw", "gc", "out")}
    assert removed["pw"] + removed["gc"] > 0  # tied gates died and went
    assert result.final["val_accuracy"] > 0.8  # chance is 1/3
    assert removed["pw"] % 4 == 0 and removed["gc"] % 4 == 0
    gc = net.module.gc
    assert gc.groups == 4 and gc.in_channels == 8 - removed["pw"]
    assert gc.out_channels == 12 - removed["gc"]
    assert [(s.name, s.shape) for s in guide.sites] == [(s.name, s.shape) for s in net.sites]
    assert result.final["units"] == {
        "pw": net.module.pw.out_channels,
        "gc": gc.out_channels,
        "out": net.module.out.out_channels,
    }
    # "kept" is a fraction of the 25 units as built; a tied gate counts its 4 units
    tiles = {"pw": 4, "gc": 4, "out": 1}
    kept = sum(int((guide.gate_probs[key(s.name)] > 0.5).sum()) * tiles[s.layer] for s in net.gates)
    assert result.final["kept"] == pytest.approx(kept / 25)
    keep = collapse(net, guide)
    small = extract(net, keep).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(data.val.x), net.predict(guide.point(), data.val.x))
    # diagnostics name a tied layer's gates by the original unit of the first group
    idata = diagnose(net, guide, data.val, num_samples=2)
    coords = idata.posterior["gc_unit"].values.tolist()
    assert coords == removed_units(net).get("gc", torch.arange(12))[: len(coords)].tolist()
    assert len(coords) == net.site("gc.gate").shape[0]


@pytest.mark.parametrize("guide", ["map", "mean_field"])
def test_a_fit_killed_after_a_tied_removal_resumes_exactly(data, tmp_path, monkeypatch, guide):
    kw = {**KW, "epochs": 4, "remove_dead": True, "checkpoint_every": 8}
    make = {"guide": guide, "gamma": 0.1}
    straight = go(pair(0, **make), data, checkpoint=tmp_path / "a", **kw)
    assert sum(sum(h["removed"].values()) for h in straight.history[:2]) > 0
    kill_at_step(monkeypatch, 21)  # in epoch 3, after the removals of epochs 1 and 2
    with pytest.raises(Killed):
        go(pair(0, **make), data, checkpoint=tmp_path / "b", **kw)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "b")["removed"]
    net, g = pair(1, **make)  # fresh objects, other initial weights
    resumed = fit(net, data, g, checkpoint=tmp_path / "b", resume=True, **kw)
    assert_same_fit(straight, resumed)


# --- torchvision ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "tied"),
    [
        ("resnext50_32x4d", {"layer1.0.conv1": 32, "layer1.0.conv2": 32, "layer3.2.conv2": 32}),
        (
            "regnet_y_400mf",
            {
                "trunk_output.block1.block1-0.f.a.0": 6,
                "trunk_output.block1.block1-0.f.b.0": 6,
                "trunk_output.block1.block1-0.f.se.fc2": 6,
            },
        ),
    ],
)
def test_torchvision_grouped_nets_extract_what_collapse_keeps(arch, tied):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10)
    randomise_batchnorm(model, torch.Generator().manual_seed(0))
    x = torch.randn(1, 3, 64, 64)
    net = sparsify(model, UnitGates(), example_input=x)
    tiles = {s.layer: s.meta.get("tile", 1) for s in net.gates}
    assert {n: tiles[n] for n in tied} == tied
    assert not any(is_grouped(model.get_submodule(n)) for n, t in tiles.items() if t == 1)
    guide = MAP(net)
    for seed in range(2):
        set_random_thetas(net, guide, seed)
        keep = collapse(net, guide)
        assert_whole_gates(net, keep)
        small = assert_extract_equals_masked(net, keep, x)
        with torch.no_grad():
            assert not torch.allclose(small(x), model.eval()(x))  # the cut changed something
        # every grouped conv keeps its groups; units coupled to another gated layer (RegNet's
        # squeeze-excitation product) go only where both drop them
        shrunk = 0
        for name, m in model.named_modules():
            if is_grouped(m):
                s = small.get_submodule(name)
                assert s.groups == m.groups and s.out_channels <= m.out_channels, name
                shrunk += s.out_channels < m.out_channels and s.in_channels < m.in_channels
        assert shrunk > 0
