"""collapse(budget=...) and budget_masks: the posterior's own cut, then the lowest-scored
kept elements, until the network -- as extract builds it -- is within the budget: never
above it, no more removed than needed, at least ``min_units`` per unit layer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesprune import Budget, collapse, extract, sparsify
from bayesprune.errors import ConfigError
from bayesprune.guides import MAP
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.priors import HALO, BlockGates, UnitGates
from bayesprune.pruning import BudgetReport, CostModel, KeepSets, budget_masks, remove_units
from bayesprune.pruning.budget_cost import unit_layers
from bayesprune.zoo import build
from tests.helpers import extracted_count, mlp, resnet, set_gates


def lenet5() -> BayesianNet:
    """LeNet-5 at width 1/4 under gates priced by FLOPs and parameters: conv1 5, conv2 12,
    fc1 125 gated units (fc2 is the output layer)."""
    return sparsify(build("lenet5", width=0.25), UnitGates(cost="mixed"))


def lenet300() -> BayesianNet:
    """LeNet-300-100 at width 1/10: fc1 30, fc2 10 gated units."""
    return sparsify(build("lenet300", width=0.1), UnitGates(cost="mixed"))


def blocks() -> BayesianNet:
    """ResNet-20 at width 1/4, its nine residual blocks gated."""
    return sparsify(resnet(), BlockGates(cost="mixed"))


def random_thetas(net: BayesianNet, seed: int) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(u, generator=g).tolist() for n, u in unit_layers(net).items()}


def gated_guide(net: BayesianNet, thetas: dict[str, list[float]]) -> MAP:
    guide = MAP(net)
    set_gates(guide, thetas)
    return guide


def kept_units(keep: dict) -> dict[str, set[int]]:
    return {
        n: ({0} if not k.identity else set()) if k.units is None else set(k.units.tolist())
        for n, k in keep.items()
    }


def halo_point(net: BayesianNet, seed: int, tiny: float = 0.0) -> dict[str, torch.Tensor]:
    """A MAP point of a per-weight HALO net with distinct magnitudes in (1e-3, 1], a
    ``tiny`` share of them near 0 (below HALO's 1e-3 threshold)."""
    g = torch.Generator().manual_seed(seed)
    point = MAP(net).point()
    for s in net.sites:
        if s.role == "weight":
            w = (0.002 + torch.rand(s.shape, generator=g)) * torch.where(
                torch.rand(s.shape, generator=g) < 0.5, -1.0, 1.0
            )
            w[torch.rand(s.shape, generator=g) < tiny] *= 1e-4
            point[s.name] = w
    return point


# --- never above the budget ----------------------------------------------------------------
CASES = [
    ("lenet5", "units"),
    ("lenet5", "params"),
    ("lenet5", "flops"),
    ("lenet300", "flops"),
    ("blocks", "units"),
    ("blocks", "params"),
    ("blocks", "flops"),
]
NETS = {"lenet5": lenet5, "lenet300": lenet300, "blocks": blocks}


@pytest.mark.parametrize(("name", "metric"), CASES)
def test_never_above_the_budget_and_no_more_cut_than_needed(name, metric):
    net = NETS[name]()
    model = CostModel(net, Budget(**{metric: 0.5}))
    fractions = torch.Generator().manual_seed(7)
    for seed in range(4):
        thetas = random_thetas(net, seed)
        # blocks: 9 of them, a budget the shortcuts-only network can meet
        low = 0.6 if name == "blocks" else 0.1
        fraction = round(low + (0.95 - low) * float(torch.rand((), generator=fractions)), 3)
        budget = Budget(**{metric: fraction})
        keep = collapse(net, gated_guide(net, thetas), budget=budget)
        assert isinstance(keep, KeepSets) and set(keep) == set(net.layer_names)
        real = extracted_count(net, keep, metric) / model.dense
        report = keep.budget
        assert real <= fraction, (seed, fraction, real)
        assert report.final == pytest.approx(real, rel=1e-12)
        assert report.measured is (metric in ("params", "flops"))
        # what it kept: the posterior's units (θ > 0.5), the highest θ first
        kept = kept_units(keep)
        for n, units in kept.items():
            assert all(thetas[n][u] > 0.5 for u in units) or len(units) == 1
        cut = [(thetas[n][u], n, u) for n in kept for u in range(len(thetas[n]))]
        cut = [c for c in cut if c[0] > 0.5 and c[2] not in kept[c[1]]]
        assert len(cut) == report.cut
        if cut:  # no more than needed: the best unit cut back in breaks the budget
            theta, n, _ = max(cut)
            floor = 0 if name == "blocks" else 1
            bigger = {m: float(max(len(u), floor)) for m, u in kept.items()}
            bigger[n] += 1
            assert model.size(bigger) > fraction
            # and every unit kept beyond a layer's last one scores at least as high
            above = [thetas[m][u] for m, us in kept.items() if len(us) > floor for u in us]
            assert all(t >= theta for t in above)


def test_the_posterior_below_the_budget_is_left_as_it_is():
    net = lenet5()
    thetas = random_thetas(net, 0)
    guide = gated_guide(net, thetas)
    plain = collapse(net, guide)
    for metric in ("units", "params", "flops"):
        keep = collapse(net, guide, budget=Budget(**{metric: 1.0}))
        assert kept_units(keep) == kept_units(plain)  # no unit added back, none cut
        report = keep.budget
        assert report.cut == 0 and report.final == pytest.approx(report.posterior)
        assert report.final < 1.0
        assert report.posterior == pytest.approx(
            CostModel(net, Budget(**{metric: 1.0})).size(
                {n: float(sum(t > 0.5 for t in v)) for n, v in thetas.items()}
            )
        )


# --- what goes first ------------------------------------------------------------------------
def test_the_lowest_theta_goes_first_across_layers():
    net = lenet300()
    g = torch.Generator().manual_seed(0)
    order = (torch.randperm(40, generator=g).float() / 40 * 0.49 + 0.51).tolist()  # all > 0.5
    thetas = {"fc1": order[:30], "fc2": order[30:]}
    keep = collapse(net, gated_guide(net, thetas), budget=Budget(units=0.5))
    best = sorted(((t, n, i) for n in thetas for i, t in enumerate(thetas[n])), reverse=True)[:20]
    assert kept_units(keep) == {n: {i for _, m, i in best if m == n} for n in thetas}
    assert keep.budget.cut == 20 and keep.budget.final == 0.5 and keep.budget.posterior == 1.0


def test_equal_thetas_are_broken_by_the_weight_norm():
    net = sparsify(mlp(4, 6, 3), UnitGates())
    guide = gated_guide(net, {"0": [0.9] * 6})
    norms = torch.tensor([0.5, 3.0, 1.0, 2.5, 0.1, 2.0])
    with torch.no_grad():
        w = torch.randn(6, 4)
        net.module[0].weight.copy_(w / w.norm(dim=1, keepdim=True) * norms[:, None])
    point = guide.point()
    point["0.weight"] = net.module[0].weight.detach().clone()
    keep = collapse(net, point=point, budget=Budget(units=0.5))
    assert keep["0"].units.tolist() == [1, 3, 5]


def test_blocks_with_the_lowest_theta_become_shortcuts():
    net = blocks()
    values = [0.9, 0.6, 0.8, 0.7, 0.95, 0.55, 0.65, 0.85, 0.75]
    thetas = {n: [t] for n, t in zip(net.layer_names, values, strict=True)}
    keep = collapse(net, gated_guide(net, thetas), budget=Budget(units=4 / 9))
    gone = sorted(n for n, k in keep.items() if k.identity)
    assert gone == ["layer1.1", "layer2.0", "layer2.2", "layer3.0", "layer3.2"]  # θ ≤ 0.75
    assert keep.budget.final == pytest.approx(4 / 9)


# --- min_units ------------------------------------------------------------------------------
@pytest.mark.parametrize("min_units", [1, 3])
def test_no_layer_is_cut_below_min_units(min_units):
    net = lenet5()
    # conv1's units are the posterior's weakest: a plain ranking would take them all
    thetas = {
        "conv1": [0.51, 0.52, 0.53, 0.54, 0.55],
        "conv2": [0.9] * 12,
        "fc1": [0.95] * 125,
    }
    guide = gated_guide(net, thetas)
    # near the smallest network (one unit a layer: 0.083 of the FLOPs; three: 0.299)
    for metric, fraction in (("units", 0.5), ("flops", {1: 0.1, 3: 0.35}[min_units])):
        keep = collapse(net, guide, budget=Budget(**{metric: fraction}), min_units=min_units)
        kept = kept_units(keep)
        assert len(kept["conv1"]) == min_units
        assert kept["conv1"] == set(range(5 - min_units, 5))  # its best ones
        assert all(len(u) >= min_units for u in kept.values())
        dense = CostModel(net, Budget(**{metric: fraction})).dense
        real = extracted_count(net, keep, metric) / dense
        assert real == pytest.approx(keep.budget.final) and real <= fraction


def test_a_layer_smaller_than_min_units_is_kept_whole_and_counted_as_it_is():
    """min_units=8 keeps all 5 of conv1's units (as collapse does), and the cut counts 5,
    not 8: it neither cuts more than needed nor refuses a budget it can meet."""
    net = lenet5()
    guide = gated_guide(net, {"conv1": [0.9] * 5, "conv2": [0.8] * 12, "fc1": [0.7] * 125})
    # (the smallest such network: 0.71 of the FLOPs)
    for metric, fraction in (("units", 0.3), ("flops", 0.75)):
        budget = Budget(**{metric: fraction})
        keep = collapse(net, guide, budget=budget, min_units=8)
        assert len(keep["conv1"].units) == 5 and len(keep["conv2"].units) >= 8
        real = extracted_count(net, keep, metric) / CostModel(net, budget).dense
        assert real == pytest.approx(keep.budget.final) and real <= fraction
        if metric == "units":
            assert real == math.floor(0.3 * 142) / 142


def test_a_layer_the_posterior_emptied_is_refilled_to_min_units_within_the_budget():
    net = lenet5()
    thetas = {"conv1": [0.1, 0.4, 0.3, 0.2, 0.05], "conv2": [0.9] * 12, "fc1": [0.9] * 125}
    guide = gated_guide(net, thetas)
    for metric in ("units", "params", "flops"):
        keep = collapse(net, guide, budget=Budget(**{metric: 0.4}), min_units=2)
        assert len(keep["conv1"].units) == 2
        assert extracted_count(net, keep, metric) / keep.budget.final == pytest.approx(
            CostModel(net, Budget(**{metric: 0.4})).dense
        )
        assert keep.budget.final <= 0.4


# --- refusals ------------------------------------------------------------------------------
def test_a_budget_below_the_smallest_network_is_refused_naming_the_field():
    net = lenet5()
    guide = gated_guide(net, random_thetas(net, 0))
    smallest = 3 / 142  # one unit per layer
    with pytest.raises(ConfigError, match=r"Budget: units=0.02 is smaller than the smallest"):
        collapse(net, guide, budget=Budget(units=0.02))
    collapse(net, guide, budget=Budget(units=smallest))  # exactly the smallest: fine
    with pytest.raises(ConfigError, match=r"units=0.05 .* \(3 unit\(s\) per layer: 0.06338"):
        collapse(net, guide, budget=Budget(units=0.05), min_units=3)  # 9 of 142 units
    for metric in ("params", "flops"):
        with pytest.raises(ConfigError, match=f"Budget: {metric}=0.001 is smaller"):
            collapse(net, guide, budget=Budget(**{metric: 0.001}))
    # blocks may all go; a budget below the network of shortcuts cannot be met
    net = blocks()
    guide = gated_guide(net, random_thetas(net, 0))
    with pytest.raises(ConfigError, match="Budget: flops=0.01 is smaller"):
        collapse(net, guide, budget=Budget(flops=0.01))
    keep = collapse(net, guide, budget=Budget(units=0.01))  # 0 blocks: allowed
    assert all(k.identity for k in keep.values())


def test_a_per_layer_fraction_below_min_units_is_refused_naming_the_layer():
    net = lenet5()
    guide = gated_guide(net, random_thetas(net, 0))
    with pytest.raises(ConfigError, match=r"units\['conv1'\]=0.1 leaves 0 of 5 units"):
        collapse(net, guide, budget=Budget(units={"conv1": 0.1}))
    with pytest.raises(ConfigError, match=r"units\['conv1'\]=0.5 leaves 2 of 5 .*min_units=3"):
        collapse(net, guide, budget=Budget(units={"conv1": 0.5}), min_units=3)
    with pytest.raises(ConfigError, match=r"units names layer\(s\) \['fc2'\]"):
        collapse(net, guide, budget=Budget(units={"fc2": 0.5}))


@pytest.mark.parametrize(
    "extra",
    [{"keep": 0.5}, {"threshold": 0.3}, {"rule": "inclusion"}, {"by": "theta"}],
    ids=["keep", "threshold", "rule", "options"],
)
def test_budget_with_another_way_to_cut_is_refused(extra):
    net = lenet5()
    guide = gated_guide(net, random_thetas(net, 0))
    with pytest.raises(ConfigError, match="budget= decides the cut by itself"):
        collapse(net, guide, budget=Budget(units=0.5), **extra)


@pytest.mark.parametrize("extra", [{"scope": "layer"}, {"max_risk": 0.1}], ids=["scope", "risk"])
def test_budget_with_scope_or_max_risk_is_refused(extra):
    net = lenet5()
    guide = gated_guide(net, random_thetas(net, 0))
    with pytest.raises(ConfigError, match="budget="):
        collapse(net, guide, budget=Budget(units=0.5), **extra)


def test_budget_masks_refuses_what_the_prior_cannot_count():
    net = sparsify(mlp(), HALO())
    with pytest.raises(ConfigError, match="flops is not a measure for HALO"):
        budget_masks(net, MAP(net).point(), Budget(flops=0.5))
    with pytest.raises(ConfigError, match="budget must be a bayesprune.Budget"):
        collapse(net, MAP(net), budget=0.5)  # type: ignore[arg-type]


# --- per-layer units ------------------------------------------------------------------------
def test_per_layer_units_cap_each_named_layer_by_its_own_theta():
    net = lenet5()
    thetas = random_thetas(net, 4)
    guide = gated_guide(net, thetas)
    keep = collapse(net, guide, budget=Budget(units={"conv2": 0.25, "fc1": 0.1}))
    kept = kept_units(keep)
    posterior = {n: {i for i, t in enumerate(v) if t > 0.5} for n, v in thetas.items()}
    for n, cap in (("conv2", 3), ("fc1", 12)):
        assert len(posterior[n]) > cap  # the budget binds
        best = sorted(posterior[n], key=lambda i: thetas[n][i], reverse=True)[:cap]
        assert kept[n] == set(best)
    assert kept["conv1"] == posterior["conv1"]  # not named: the posterior's cut
    report = keep.budget
    assert report.metric == "units" and report.target is None and not report.measured
    assert report.cut == sum(len(posterior[n]) - len(kept[n]) for n in kept)
    assert report.final == pytest.approx(sum(len(u) for u in kept.values()) / 142)
    assert "budget units per layer" in str(report)
    # a cap above what the posterior kept changes nothing
    loose = collapse(net, guide, budget=Budget(units={"conv2": 1.0}))
    assert kept_units(loose) == posterior and loose.budget.cut == 0


def test_per_layer_caps_count_the_units_as_built_after_live_removal():
    net = lenet5()
    guide = MAP(net)
    remove_units(net, guide, {"fc1": list(range(50))})  # 50 of fc1's 125 units left
    thetas = {
        "conv1": [0.9] * 5,
        "conv2": [0.9] * 12,
        "fc1": torch.linspace(0.6, 0.99, 50).tolist(),
    }
    set_gates(guide, thetas)
    keep = collapse(net, guide, budget=Budget(units={"fc1": 0.2}))
    assert kept_units(keep)["fc1"] == set(range(25, 50))  # 0.2 x 125, the 25 highest θ
    assert keep.budget.final == pytest.approx((5 + 12 + 25) / 142)


# --- the report -----------------------------------------------------------------------------
def test_the_report_says_how_far_the_posterior_was_from_the_budget():
    net = lenet300()
    thetas = {"fc1": [0.9] * 24 + [0.1] * 6, "fc2": [0.8] * 8 + [0.2] * 2}  # keeps 32 of 40
    guide = gated_guide(net, thetas)
    keep = collapse(net, guide, budget=Budget(units=0.3))
    report = keep.budget
    assert isinstance(report, BudgetReport)
    assert (report.metric, report.target, report.measured) == ("units", 0.3, False)
    assert report.posterior == 32 / 40
    assert report.final == 12 / 40  # floor(0.3 x 40)
    assert report.cut == 32 - 12
    assert str(report) == ("budget units 0.3: the posterior kept 0.8, cut to 0.3 (20 more removed)")
    flops = collapse(net, guide, budget=Budget(flops=0.3)).budget
    assert (flops.metric, flops.target, flops.measured) == ("flops", 0.3, True)
    assert flops.final <= 0.3 < flops.posterior
    assert str(flops).endswith("counted on the extracted network)")
    # a plain collapse has no report
    assert collapse(net, guide).budget is None


# --- budget_masks: the extracted network's count --------------------------------------------
def test_a_measure_above_the_model_cuts_on_and_one_never_met_is_refused():
    net = lenet300()
    point = gated_guide(net, random_thetas(net, 2)).point()
    budget = Budget(flops=0.5)
    model = CostModel(net, budget)
    masks, plain = budget_masks(net, point, budget, model=model)

    def size(m):
        return model.size({n: float(v.sum()) for n, v in m.items()})

    def bigger(m):  # an extracted network 10% larger than the model says
        return 1.1 * size(m)

    more, report = budget_masks(net, point, budget, model=model, measure=bigger)
    assert report.measured and report.final == pytest.approx(bigger(more))
    assert report.final <= 0.5 < bigger(masks)
    assert report.cut > plain.cut
    assert all(bool((more[n] <= masks[n]).all()) for n in masks)  # cut on, nothing back
    with pytest.raises(ConfigError, match="cannot be met by the extracted network"):
        budget_masks(net, point, budget, model=model, measure=lambda m: 0.9)


# --- weights --------------------------------------------------------------------------------
def halo_net() -> BayesianNet:
    torch.manual_seed(0)
    return sparsify(mlp(8, 16, 12, 3), HALO())  # 128 + 192 + 36 = 356 weights


def test_a_weights_budget_keeps_exactly_floor_fraction_n_of_the_largest():
    net = halo_net()
    point = halo_point(net, 0)
    n = 356
    magnitude = torch.cat([point[f"{m}.weight"].abs().flatten() for m in ("0", "2", "4")])
    model = CostModel(net, Budget(weights=0.5))
    for k in range(0, n + 1, 7):
        fraction = max(k, 1) / n  # every k/n, the float rounding of k/n · n included
        masks, report = budget_masks(net, point, Budget(weights=fraction), model=model)
        flat = torch.cat([masks[m].flatten() for m in ("0", "2", "4")])
        k = max(k, 1)
        assert int(flat.sum()) == k and report.final == k / n
        assert set(flat.nonzero().flatten().tolist()) == set(magnitude.topk(k).indices.tolist())
    keep = collapse(net, point=point, budget=Budget(weights=0.3))
    assert extracted_count(net, keep, "weights") == math.floor(0.3 * n)
    assert keep.budget.posterior == 1.0 and keep.budget.cut == n - math.floor(0.3 * n)


@settings(max_examples=60, deadline=None)
@given(fraction=st.floats(min_value=1e-6, max_value=1.0))
def test_any_weights_budget_keeps_floor_fraction_n(fraction):
    net = sparsify(nn.Linear(10, 10), HALO(), layers=nn.Linear)
    point = halo_point(net, 1)
    masks, report = budget_masks(net, point, Budget(weights=fraction))
    want = math.floor(fraction * 100 + 1e-9)
    assert int(masks[""].sum()) == want and report.final == want / 100 <= fraction + 1e-15


def test_a_weights_budget_keeps_the_posteriors_near_zero_weights_when_it_kept_fewer():
    net = halo_net()
    point = halo_point(net, 2, tiny=0.8)
    alive = sum(int((point[f"{m}.weight"].abs() > 1e-3).sum()) for m in ("0", "2", "4"))
    assert alive < 0.5 * 356
    keep = collapse(net, point=point, budget=Budget(weights=0.5))
    assert extracted_count(net, keep, "weights") == 178  # not `alive`
    report = keep.budget
    assert report.posterior == alive / 356 < report.final == 0.5 and report.cut == 0
    # min_units does not apply to weights: a tiny budget empties layers
    keep = collapse(net, point=point, budget=Budget(weights=1 / 356), min_units=3)
    assert extracted_count(net, keep, "weights") == 1


def test_per_unit_halo_cuts_units_by_their_norm():
    torch.manual_seed(0)
    net = sparsify(mlp(8, 16, 12, 3), HALO(per="unit"), layers=["0", "2"])
    point = MAP(net).point()
    norms = {"0": torch.linspace(0.1, 1.6, 16), "2": torch.linspace(0.15, 1.25, 12)}
    for m, v in norms.items():
        w = torch.randn(v.numel(), 8 if m == "0" else 16)
        point[f"{m}.weight"] = w / w.norm(dim=1, keepdim=True) * v[:, None]
    keep = collapse(net, point=point, budget=Budget(units=0.5))
    best = sorted(((float(t), m, i) for m in norms for i, t in enumerate(norms[m])))[-14:]
    assert kept_units(keep) == {m: {i for _, n, i in best if n == m} for m in norms}


def test_a_units_budget_never_cuts_the_classes():
    """Per-unit HALO leaves the output layer out by default (its units are the classes),
    as the gates do, so a units budget cannot remove a class."""
    torch.manual_seed(0)
    net = sparsify(mlp(8, 16, 3), HALO(per="unit"), example_input=torch.zeros(1, 8))
    assert list(net.layer_sites) == ["0"]
    keep = collapse(net, point=MAP(net).point(), budget=Budget(units=0.25))
    assert keep["0"].n_kept == 4
    assert extract(net, keep)(torch.randn(2, 8)).shape == (2, 3)
