"""CostModel: the size of a cut network from kept-unit counts alone, checked against the
network ``extract`` builds -- exact where no two gated layers share channels, an
under-count where they do (residual streams, a gated depthwise conv), which
``collapse(budget=...)`` corrects by counting the extracted network."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

from bayesprune import Budget, collapse, sparsify
from bayesprune.errors import ConfigError
from bayesprune.guides import MAP
from bayesprune.metrics import count_flops, count_parameters
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.priors import HALO, BlockGates, Dense, Gaussian, UnitGates
from bayesprune.pruning import CostModel, KeepSet, remove_units
from bayesprune.pruning.budget_cost import check_budget, unit_layers
from bayesprune.zoo import build
from tests.helpers import (
    configuration_weight,
    configurations,
    extracted_count,
    mlp,
    mlp_bn,
    resnet,
    set_gates,
)


class ConvBN(nn.Module):
    """Conv-BN-ReLU twice, flatten, Linear, on ``(2, 6, 6)`` inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 5, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 6, 3)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


class Depthwise(nn.Module):
    """Conv-BN-ReLU, a depthwise conv-BN-ReLU, a pointwise conv, flatten, Linear, on
    ``(1, 6, 6)`` inputs: the depthwise conv's channels are its producer's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(4)
        self.pw = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        return self.fc(torch.relu(self.pw(x)).flatten(1))


def gated(module: nn.Module, shape: tuple[int, ...], **kw) -> BayesianNet:
    return sparsify(module, UnitGates(cost="mixed"), example_input=torch.zeros(1, *shape), **kw)


#: networks whose gated layers share no channels: the model is exact on them
EXACT: dict[str, Callable[[], BayesianNet]] = {
    "lenet300": lambda: sparsify(build("lenet300", width=0.1), UnitGates(cost="mixed")),
    "lenet5": lambda: sparsify(build("lenet5", width=0.25), UnitGates(cost="mixed")),
    "conv-bn": lambda: gated(ConvBN(), (2, 6, 6)),
    "linear-bn": lambda: gated(mlp_bn(), (5,)),
    # only the producer gated: the depthwise conv follows it, linearly (not f_out * f_in)
    "depthwise-producer": lambda: gated(Depthwise(), (1, 6, 6), layers=["conv1", "pw"]),
    # residual blocks' inner convs only: their channels never reach the residual stream
    "resnet20-inner": lambda: sparsify(
        resnet(),
        UnitGates(cost="mixed"),
        layers=[f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)],
    ),
}


def random_cut(
    net: BayesianNet, generator: torch.Generator
) -> tuple[dict[str, float], dict[str, KeepSet]]:
    """Random kept units of every gated layer (at least one) or a random block kept / made
    its shortcut: ``(kept counts, keep-sets)``."""
    kept, keep = {}, {}
    for name, units in unit_layers(net).items():
        if not isinstance(getattr(net.module.get_submodule(name), "weight", None), torch.Tensor):
            on = bool(torch.rand((), generator=generator) < 0.5)
            kept[name], keep[name] = float(on), KeepSet(identity=not on, n_units=1)
            continue
        k = int(torch.randint(1, units + 1, (), generator=generator))
        idx = torch.randperm(units, generator=generator)[:k].sort().values
        kept[name], keep[name] = float(k), KeepSet(units=idx, n_units=units)
    return kept, keep


def dense_count(module: nn.Module, x: torch.Tensor, metric: str) -> float:
    if metric == "params":
        return float(count_parameters(module)["params"])
    return float(count_flops(module, x[:1])["macs"])


# --- exact where nothing is coupled --------------------------------------------------------
@pytest.mark.parametrize("metric", ["params", "flops"])
@pytest.mark.parametrize("name", list(EXACT))
def test_the_model_counts_what_extract_builds(name, metric):
    net = EXACT[name]()
    model = CostModel(net, Budget(**{metric: 0.5}))
    assert model.dense == dense_count(net.module, net.example_input, metric)
    assert model.size({}) == 1.0  # nothing cut: the whole network
    assert model.size({n: float(u) for n, u in unit_layers(net).items()}) == 1.0
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        kept, keep = random_cut(net, g)
        want = extracted_count(net, keep, metric)
        assert model.count(kept) == pytest.approx(want, rel=1e-9), kept
        assert model.size(kept) == pytest.approx(want / model.dense, rel=1e-9)
    # one unit left everywhere: the smallest the model can describe
    ones = {n: 1.0 for n in unit_layers(net)}
    keep = {n: KeepSet(units=torch.tensor([0]), n_units=u) for n, u in unit_layers(net).items()}
    assert model.count(ones) == pytest.approx(extracted_count(net, keep, metric), rel=1e-9)


@pytest.mark.parametrize("metric", ["params", "flops"])
def test_resnet20_blocks_cost_their_residual_branch(metric):
    net = sparsify(resnet(), BlockGates(cost="mixed"))
    model = CostModel(net, Budget(**{metric: 0.5}))
    assert model.blocks and unit_layers(net) == {n: 1 for n in net.layer_names}
    assert model.dense == dense_count(net.module, net.example_input, metric)
    assert model.size({}) == 1.0
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        kept, keep = random_cut(net, g)
        assert 0 < sum(kept.values()) < len(kept)  # a mixed cut, not all or nothing
        assert model.count(kept) == extracted_count(net, keep, metric), kept
    # every block its shortcut: stem, downsampling shortcuts and head are what is left
    none = {n: KeepSet(identity=True, n_units=1) for n in net.layer_names}
    assert model.count({n: 0.0 for n in net.layer_names}) == extracted_count(net, none, metric)


def test_units_and_weights_are_counted_directly():
    net = sparsify(build("lenet5", width=0.25), UnitGates())
    units = CostModel(net, Budget(units=0.5))
    assert units.units_now == units.units_built == {"conv1": 5, "conv2": 12, "fc1": 125}
    assert units.dense == 142
    assert units.count({"conv1": 2, "fc1": 10.5}) == 2 + 12 + 10.5  # expected counts too
    assert units.size({"conv1": 2, "conv2": 6, "fc1": 0}) == 8 / 142
    assert units.layer_sizes({"conv2": 3}) == {"conv1": 1.0, "conv2": 0.25, "fc1": 1.0}

    halo = sparsify(build("lenet300", width=0.1), HALO())
    weights = CostModel(halo, Budget(weights=0.5))
    n = sum(m.weight.numel() for m in halo.module.modules() if isinstance(m, nn.Linear))
    assert weights.total_weights == weights.dense == n == 784 * 30 + 30 * 10 + 10 * 10
    assert weights.count({"*": 17}) == 17 and weights.size({"*": n / 4}) == 0.25
    assert weights.units_now == {}

    blocks = CostModel(sparsify(resnet(), BlockGates()), Budget(units=0.5))
    assert blocks.dense == 9 and blocks.size({"layer1.0": 0, "layer3.2": 0}) == 7 / 9


def test_the_model_is_the_exact_expectation_under_independent_gates():
    """With expected counts ``Σθ`` the bilinear count is ``E_q[count]``: checked by summing
    the model's count over every joint gate value of a tiny MLP, weighted by ``q``."""
    net = sparsify(mlp(4, 3, 2, 2), UnitGates(cost="mixed"), example_input=torch.zeros(1, 4))
    thetas = {"0": [0.9, 0.2, 0.6], "2": [0.3, 0.7]}
    for metric in ("params", "flops"):
        model = CostModel(net, Budget(**{metric: 0.5}))
        t = [torch.tensor(v, dtype=torch.float64) for v in thetas.values()]
        expected = 0.0
        for zs in configurations([3, 2]):
            kept = {n: float(z.sum()) for n, z in zip(thetas, zs, strict=True)}
            expected += float(configuration_weight(zs, t)) * model.count(kept)
        assert model.count({n: sum(v) for n, v in thetas.items()}) == pytest.approx(expected)


# --- after live removal ----------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["units", "params", "flops"])
def test_after_live_removal_the_reference_is_the_network_as_built(metric):
    net = sparsify(build("lenet5", width=0.25), UnitGates(cost="mixed"))
    guide = MAP(net)
    x = net.example_input
    before = CostModel(net, Budget(**{metric: 0.5}))
    remove_units(net, guide, {"conv1": [0, 2, 4], "fc1": list(range(0, 125, 5))})
    after = CostModel(net, Budget(**{metric: 0.5}))
    assert after.units_now == {"conv1": 3, "conv2": 12, "fc1": 25}
    assert after.units_built == before.units_built == {"conv1": 5, "conv2": 12, "fc1": 125}
    assert after.dense == before.dense  # still the network as built
    now = 40.0 if metric == "units" else dense_count(net.module, x, metric)
    assert after.count({}) == now  # the network as it is now
    assert after.size({}) == pytest.approx(now / before.dense)
    # a cut of what is left: counted in the current indexing, exact as before
    if metric != "units":
        g = torch.Generator().manual_seed(2)
        for _ in range(4):
            kept, keep = random_cut(net, g)
            assert after.count(kept) == extracted_count(net, keep, metric)
    # and the same counts as the model built before the removal, given in original units
    assert after.count({"conv2": 6}) == pytest.approx(
        before.count({"conv1": 3, "conv2": 6, "fc1": 25})
    )


# --- coupled layers: an under-count ---------------------------------------------------------
COUPLED: dict[str, Callable[[], BayesianNet]] = {
    # the stem and every block's conv2 (and downsampling shortcut) write one residual
    # stream per stage: a channel of it stays while any of them keeps it
    "resnet20": lambda: sparsify(resnet(), UnitGates(cost="mixed")),
    # a gated depthwise conv and its producer slice the same channels
    "depthwise": lambda: gated(Depthwise(), (1, 6, 6)),
}


@pytest.mark.parametrize("name", list(COUPLED))
def test_coupled_layers_are_under_counted_and_collapse_counts_the_extracted_network(name):
    """Documents a limit of the model: where gated layers share channels, ``extract``
    removes a shared channel only if every layer on it drops it, and the model (one layer
    decides each factor) counts less than that network has -- never more. A budgeted fit
    steers by the model; ``collapse(budget=...)`` counts the extracted network and cuts
    on until it is within the budget."""
    net = COUPLED[name]()
    x = net.example_input
    g = torch.Generator().manual_seed(3)
    for metric in ("params", "flops"):
        model = CostModel(net, Budget(**{metric: 0.5}))
        assert model.dense == dense_count(net.module, x, metric)
        under = 0
        for _ in range(5):
            kept, keep = random_cut(net, g)
            real = extracted_count(net, keep, metric)
            assert model.count(kept) <= real
            under += model.count(kept) < real
        assert under > 0

        guide = MAP(net)
        set_gates(
            guide, {n: torch.rand(u, generator=g).tolist() for n, u in unit_layers(net).items()}
        )
        for fraction in (0.7, 0.45):
            keep = collapse(net, guide, budget=Budget(**{metric: fraction}))
            real = extracted_count(net, keep, metric) / model.dense
            report = keep.budget
            assert report.measured and report.final == pytest.approx(real, rel=1e-12)
            assert real <= fraction
            # the model thought the cut smaller than it is
            kept = {n: float(len(k.units)) for n, k in keep.items()}
            assert model.size(kept) <= real


# --- refusals -------------------------------------------------------------------------------
def test_a_measure_the_prior_cannot_be_held_to_is_refused_naming_it():
    lenet = build("lenet300", width=0.1)
    cases = [
        (
            sparsify(lenet, UnitGates()),
            Budget(flops=0.1),
            r"flops is not a measure .*cost='uniform'",
        ),
        (sparsify(lenet, UnitGates(cost="flops")), Budget(params=0.1), "use cost='params' or"),
        (sparsify(lenet, UnitGates(cost="params")), Budget(flops=0.1), "use cost='flops' or"),
        (sparsify(lenet, UnitGates()), Budget(weights=0.1), "it can be held to units"),
        (sparsify(lenet, HALO()), Budget(units=0.1), "units is not a measure for HALO"),
        (sparsify(lenet, HALO()), Budget(flops=0.1), "flops is not a measure for HALO"),
        (sparsify(lenet, HALO(per="unit")), Budget(weights=0.1), "it can be held to units"),
        (sparsify(lenet, Gaussian(1.0)), Budget(units=0.1), "no strength a fit can adapt"),
        (sparsify(lenet, Dense()), Budget(weights=0.1), "no strength a fit can adapt"),
        (sparsify(resnet(), BlockGates()), Budget(flops=0.1), "flops is not a measure"),
    ]
    for net, budget, match in cases:
        with pytest.raises(ConfigError, match=match):
            check_budget(net, budget)
        with pytest.raises(ConfigError, match=match):
            CostModel(net, budget)


def test_what_each_prior_may_be_held_to():
    lenet = build("lenet300", width=0.1)
    allowed = {
        "halo-weight": (HALO(), {"weights"}),
        "halo-unit": (HALO(per="unit"), {"units"}),
        "gates-uniform": (UnitGates(), {"units"}),
        "gates-flops": (UnitGates(cost="flops"), {"units", "flops"}),
        "gates-params": (UnitGates(cost="params"), {"units", "params"}),
        "gates-mixed": (UnitGates(cost="mixed"), {"units", "params", "flops"}),
    }
    for _, (prior, metrics) in allowed.items():
        net = sparsify(lenet, prior)
        for metric in ("weights", "units", "params", "flops"):
            if metric in metrics:
                check_budget(net, Budget(**{metric: 0.5}))
                assert math.isfinite(CostModel(net, Budget(**{metric: 0.5})).dense)
            else:
                with pytest.raises(ConfigError, match=f"{metric} is not a measure"):
                    check_budget(net, Budget(**{metric: 0.5}))


def test_per_layer_budget_naming_unknown_layers_and_non_budgets_are_refused():
    net = sparsify(build("lenet300", width=0.1), UnitGates())
    check_budget(net, Budget(units={"fc1": 0.5}))
    with pytest.raises(ConfigError, match=r"units names layer\(s\) \['fc3', 'nope'\] that carry"):
        check_budget(net, Budget(units={"fc1": 0.5, "nope": 0.5, "fc3": 0.5}))
    for bad in (0.5, "flops=0.5", {"flops": 0.5}, None):
        with pytest.raises(ConfigError, match="budget must be a bayesprune.Budget"):
            check_budget(net, bad)  # type: ignore[arg-type]


def test_params_and_flops_need_an_example_input():
    net = sparsify(mlp(), UnitGates(cost="mixed"), example_input=torch.zeros(1, 8))
    net.example_input = None
    for metric in ("params", "flops"):
        with pytest.raises(ConfigError, match=f"counting {metric} needs an example input"):
            CostModel(net, Budget(**{metric: 0.5}))
    assert CostModel(net, Budget(units=0.5)).dense == 16  # units need none
