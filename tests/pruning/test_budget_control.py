"""fit(budget=...): the prior's strength steered to a size, the posterior cut to the budget
late in the fit and held, the Pyro model scaled by the same strength, refusals before any
step, and an exact resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pyro import poutine
from torch.utils.data import DataLoader, IterableDataset

from bayesprune import Budget, collapse, extract, fit, sparsify
from bayesprune.distributions.flattening import log_normalizer, optimal_prior_prob
from bayesprune.errors import CheckpointError, ConfigError
from bayesprune.guides import MAP, MeanField
from bayesprune.guides.base import key
from bayesprune.inference import load_checkpoint
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.priors import HALO, UnitGates
from bayesprune.pruning import BudgetControl, CostModel
from bayesprune.pruning.budget_control import target_at
from tests.conftest import Killed, kill_at_step
from tests.helpers import (
    assert_fused_equals_trace,
    assert_same_fit,
    extracted_count,
    mlp,
    records,
    set_gates,
)

# 128 examples in batches of 16: 8 steps an epoch; fast gates so that sizes move in a few steps
KW = {"batch_size": 16, "lr": 1e-2, "role_lr": {"gate": 0.1}, "progress": False}
F64 = torch.float64


def gates_pair(seed: int = 0, cost: str = "uniform") -> tuple[BayesianNet, MAP]:
    """An 8-16-16-3 MLP under unit gates (32 gated units), its MAP guide."""
    torch.manual_seed(seed)
    net = sparsify(
        mlp(8, 16, 16, 3), UnitGates(gamma=0.3, cost=cost), example_input=torch.zeros(1, 8)
    )
    return net, MAP(net)


def halo_pair(seed: int = 0, per: str = "weight") -> tuple[BayesianNet, MAP]:
    """An 8-16-3 MLP under HALO, its MAP guide: per weight on both layers (128 + 48 = 176
    weights), per unit on the hidden layer only (16 units; not the classes)."""
    torch.manual_seed(seed)
    layers = None if per == "weight" else ["0"]
    net = sparsify(mlp(8, 16, 3), HALO(xi=1e-3, psi=1e-3, per=per), layers=layers)
    return net, MAP(net)


def steer(budget: Budget, **kw) -> BudgetControl:
    """The controller, updating every other step, looking 4 steps ahead (short fits)."""
    return BudgetControl(budget, every=2, lookahead=4, **kw)


def thetas(guide) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in guide.gate_probs.values()])


# --- a budgeted fit ends at its budget -------------------------------------------------------
@pytest.mark.parametrize(
    ("cost", "budget"), [("uniform", Budget(units=0.3)), ("flops", Budget(flops=0.3))]
)
def test_a_gated_fit_ends_within_its_budget_on_the_extracted_network(class_data, cost, budget):
    net, guide = gates_pair(cost=cost)
    dense = CostModel(net, budget).dense
    result = fit(net, class_data, guide, epochs=4, budget=steer(budget), **KW)
    # the posterior is a point mass: every gate exactly open or closed
    t = thetas(guide)
    assert bool(((t == 0) | (t == 1)).all())
    keep = collapse(net, guide)
    size = extracted_count(net, keep, budget.metric) / dense
    assert 0.75 * budget.fraction <= size <= budget.fraction
    assert result.history[-1]["budget"]["size"] == pytest.approx(size)
    # collapse to the same budget has nothing left to cut
    again = collapse(net, guide, budget=budget)
    assert {n: k.units.tolist() for n, k in again.items()} == {
        n: k.units.tolist() for n, k in keep.items()
    }
    assert again.budget.cut == 0 and again.budget.posterior == pytest.approx(size)
    # the stochastic model and the extracted network compute the same function
    small = extract(net, keep).eval()
    x = class_data.val.x
    with torch.no_grad():
        torch.testing.assert_close(small(x), net.predict(guide.point(), x))
    # the hold released the multiplier: the prior is back at its configured strength
    assert net.prior.strength == 1.0


def test_the_history_records_the_multiplier_and_its_trace(class_data):
    net, guide = gates_pair()
    budget = Budget(units=0.3)
    result = fit(net, class_data, guide, epochs=4, budget=steer(budget, settle=0.85), **KW)
    hist = result.history
    assert [h["budget"]["phase"] for h in hist] == ["steer"] * 3 + ["cut"]
    for h in hist:
        b = h["budget"]
        assert (b["metric"], b["target"]) == ("units", 0.3)
        assert set(b) >= {"multiplier", "size", "phase"}
    trace = [row for h in hist for row in h["budget_trace"]]
    steps = [row[0] for row in trace]
    # every other step done until the cut (after step 28 of 32: ceil(0.85 x 32))
    assert steps == list(range(2, 28, 2))
    for h in hist[:-1]:  # while steering, the record's multiplier is the last update's
        assert h["budget"]["multiplier"] == h["budget_trace"][-1][1]
    # the size stays above its target, and every update makes the prior stronger, from
    # a gentle start (a tenth of the configured strength)
    assert all(size > target for _, _, size, target in trace)
    multipliers = [row[1] for row in trace]
    assert multipliers[0] > 0.1 and multipliers == sorted(set(multipliers))
    assert all(0 <= row[2] <= 1 for row in trace)
    # the target: 0.9 (every θ starts there) falling along the cubic to what the controller
    # aims at: the budget, or a little above it (the cut trims the rest)
    aim = trace[-1][3]
    assert 0.3 <= aim <= 0.3 * 1.1
    for step, _, _, target in trace:
        want = target_at((step + 4) / 32, s0=0.9, budget=aim, warmup=0.05, ramp=0.6)
        assert target == pytest.approx(want, rel=1e-6)
    # the cut: where, from what, to what
    last = hist[-1]["budget"]
    assert last["multiplier"] == 1.0
    report = last["cut_report"]
    assert report["step"] == 28 and report["final"] <= 0.3 < report["posterior"]
    assert report["cut"] > 0
    assert last["size"] == pytest.approx(report["final"])
    json.dumps(hist)  # JSON-able, as checkpoints need


def test_a_halo_weights_budget_ends_with_exactly_floor_b_n_nonzero_weights(class_data):
    net, guide = halo_pair()
    budget = Budget(weights=0.2)
    result = fit(net, class_data, guide, epochs=3, budget=steer(budget), **KW)
    k = math.floor(0.2 * 176)
    point = guide.point()
    assert sum(int((point[f"{m}.weight"] != 0).sum()) for m in ("0", "2")) == k  # held at 0
    keep = collapse(net, guide, budget=budget)
    assert extracted_count(net, keep, "weights") == k
    assert keep.budget.cut == 0 and keep.budget.final == k / 176
    assert result.history[-1]["budget"]["cut_report"]["final"] == k / 176


def test_a_per_unit_halo_units_budget_zeroes_whole_rows(class_data):
    net, guide = halo_pair(per="unit")
    budget = Budget(units=0.3)
    result = fit(net, class_data, guide, epochs=3, budget=steer(budget), **KW)
    w = guide.point()["0.weight"]
    alive = w.abs().sum(1) != 0
    assert int(alive.sum()) <= math.floor(0.3 * 16)  # whole rows held at exactly 0
    assert bool((w[alive] != 0).all())  # and only whole rows
    keep = collapse(net, guide, budget=budget)
    assert keep["0"].units.tolist() == alive.nonzero().flatten().tolist()
    assert result.history[-1]["budget"]["phase"] == "cut"


def test_without_a_cut_the_fit_ends_at_the_controllers_size(class_data):
    """``settle=1``: no cut, no hold; the multiplier is left where it was (fit state) and
    ``collapse(budget=...)`` makes the cut."""
    net, guide = gates_pair()
    budget = Budget(units=0.3)
    result = fit(net, class_data, guide, epochs=2, budget=steer(budget, settle=1.0), **KW)
    assert {h["budget"]["phase"] for h in result.history} == {"steer"}
    assert "cut_report" not in result.history[-1]["budget"]
    t = thetas(guide)
    assert not bool(((t == 0) | (t == 1)).all())
    assert net.prior.strength == result.history[-1]["budget"]["multiplier"] != 1.0
    keep = collapse(net, guide, budget=budget)
    assert extracted_count(net, keep, "units") <= math.floor(0.3 * 32)
    assert keep.budget.cut > 0


def test_per_layer_units_get_a_multiplier_each(class_data):
    net, guide = gates_pair()
    budget = Budget(units={"0": 0.25, "2": 0.5})
    result = fit(net, class_data, guide, epochs=4, budget=steer(budget), **KW)
    keep = collapse(net, guide)
    assert len(keep["0"].units) <= 4 and len(keep["2"].units) <= 8
    steer_rec = result.history[0]["budget"]
    assert isinstance(steer_rec["multiplier"], list) and len(steer_rec["multiplier"]) == 2
    rows = result.history[0]["budget_trace"]
    assert rows[-1][1] == steer_rec["multiplier"]
    assert all(len(row[1]) == len(row[2]) == len(row[3]) == 2 for row in rows)
    assert net.prior.layer_strength == {"0": 1.0, "2": 1.0}  # released after the cut


# --- refusals before any step --------------------------------------------------------------------
class Stream(IterableDataset):
    """An iterable data set without a length."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y, strict=True))


def _refusals():
    return {
        "halo-flops": (halo_pair, MAP, Budget(flops=0.5), {}, "flops is not a measure for HALO"),
        "uniform-gates-flops": (
            gates_pair,
            MAP,
            Budget(flops=0.5),
            {},
            r"flops is not a measure .*cost='uniform'",
        ),
        "mean-field-halo-weights": (
            halo_pair,
            lambda net: MeanField(net, init_scale=0.05),
            Budget(weights=0.5),
            {},
            "MeanField cannot express the cut network",
        ),
        "mean-field-halo-units": (
            lambda: halo_pair(per="unit"),
            lambda net: MeanField(net, init_scale=0.05),
            Budget(units=0.5),
            {},
            "MeanField cannot express the cut network",
        ),
        "unknown-layer": (
            gates_pair,
            MAP,
            Budget(units={"4": 0.5}),
            {},
            r"units names layer\(s\) \['4'\]",
        ),
        "a-number": (gates_pair, MAP, 0.3, {}, "budget must be a bayesprune.Budget"),
        "a-string": (gates_pair, MAP, "units=0.3", {}, "budget must be a bayesprune.Budget"),
        "a-dict": (gates_pair, MAP, {"units": 0.3}, {}, "budget must be a bayesprune.Budget"),
        "no-len": (gates_pair, MAP, Budget(units=0.3), {"stream": True}, "loader has no len"),
    }


@pytest.mark.parametrize("case", list(_refusals()))
def test_a_budget_the_fit_cannot_meet_is_refused_before_any_step(class_data, tmp_path, case):
    make, make_guide, budget, extra, match = _refusals()[case]
    net, _ = make()
    guide = make_guide(net)
    before = {k: v.clone() for k, v in [*guide.state_dict().items(), *net.state_dict().items()]}
    data = class_data
    kw = dict(KW)
    if extra.get("stream"):
        data = DataLoader(Stream(class_data.train.x, class_data.train.y), batch_size=16)
        kw = {k: v for k, v in KW.items() if k != "batch_size"} | {"n_data": 128}
    with pytest.raises(ConfigError, match=match):
        fit(net, data, guide, epochs=2, budget=budget, checkpoint=tmp_path / "ck", **kw)
    after = dict([*guide.state_dict().items(), *net.state_dict().items()])
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())
    assert net.prior.strength == 1.0 and net.prior.layer_strength is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"every": 0}, "every must be an integer >= 1"),
        ({"every": True}, "every must be an integer >= 1"),
        ({"every": 2.0}, "every must be an integer >= 1"),
        ({"warmup": -0.1}, "warmup must be a fraction"),
        ({"settle": 1.5}, "settle must be a fraction"),
        ({"ramp": math.nan}, "ramp must be a fraction"),
        ({"warmup": 0.5, "ramp": 0.4}, "need warmup <= ramp <= settle"),
        ({"ramp": 0.9, "settle": 0.8}, "need warmup <= ramp <= settle"),
        ({"gain": 0}, "gain must be > 0"),
        ({"gain": math.nan}, "gain must be > 0"),
        ({"lookahead": -1}, "lookahead must be an integer >= 0"),
        ({"lookahead": 1.5}, "lookahead must be an integer >= 0"),
        ({"start": 0}, "start must be > 0"),
        ({"start": True}, "start must be > 0"),
        ({"start": math.nan}, "start must be > 0"),
    ],
)
def test_controller_settings_are_checked(kw, match):
    with pytest.raises(ConfigError, match=match):
        BudgetControl(Budget(units=0.5), **kw)


# --- the strength scales the Pyro model ---------------------------------------------------------
def _model_trace(net: BayesianNet, values: dict[str, torch.Tensor], x, y, n_data: int):
    conditioned = poutine.condition(net.model, data=values)
    tr = poutine.trace(conditioned).get_trace(x, y, n_data=n_data)
    tr.compute_log_prob()
    return tr


def _site_log_probs(tr) -> dict[str, float]:
    return {
        n: float(s["log_prob_sum"].detach()) for n, s in tr.nodes.items() if s["type"] == "sample"
    }


@pytest.mark.parametrize("strength", [2.0, 0.3])
def test_strength_scales_the_gates_flattening_prior_in_the_pyro_model(strength):
    torch.manual_seed(0)
    net = sparsify(mlp(4, 5, 3, 2).to(F64), UnitGates(gamma=2.0))
    x, y, n = torch.randn(6, 4, dtype=F64), torch.tensor([0, 1, 0, 1, 1, 0]), 40
    values = {
        n_: s["value"].detach()
        for n_, s in poutine.trace(net.model).get_trace(x, y, n_data=n).nodes.items()
        if s["type"] == "sample" and not s["is_observed"]
    }
    at = {}
    for s_ in (1.0, strength):
        net.prior.strength = s_
        at[s_] = _site_log_probs(_model_trace(net, values, x, y, n))
    net.prior.strength = 1.0
    assert at[1.0].keys() == at[strength].keys()
    for site, lp in at[1.0].items():
        if not site.endswith("gate_prob"):
            assert at[strength][site] == lp, site  # gates, weights, likelihood: untouched
            continue
        pi = values[site]
        gamma = torch.full_like(pi, 2.0)

        def log_p(g, pi=pi):  # the flattening density, written out
            return float((-torch.log1p(pi * torch.expm1(g)) - log_normalizer(g)).sum())

        want = log_p(strength * gamma) - log_p(gamma)
        assert at[strength][site] - lp == pytest.approx(want, rel=1e-9, abs=1e-9), site
        assert want != 0


@pytest.mark.parametrize("per", ["weight", "unit"])
def test_strength_scales_halo_xi_and_psi_in_the_pyro_model(per):
    torch.manual_seed(0)
    xi, psi, n, s = 1e-2, 2e-2, 30, 2.5
    net = sparsify(mlp(4, 5, 2).to(F64), HALO(xi=xi, psi=psi, per=per))
    x, y = torch.randn(6, 4, dtype=F64), torch.tensor([0, 1, 0, 1, 1, 0])
    values = {
        name: site["value"].detach()
        for name, site in poutine.trace(net.model).get_trace(x, y, n_data=n).nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    }
    base = _site_log_probs(_model_trace(net, values, x, y, n))
    net.prior.strength = s
    scaled = _site_log_probs(_model_trace(net, values, x, y, n))
    net.prior.layer_strength = {"0": 3.0}  # on top, for layer "0" only
    layered = _site_log_probs(_model_trace(net, values, x, y, n))
    net.prior.strength, net.prior.layer_strength = 1.0, None
    shared = {s_.name: s_.meta.get("shared") for s_ in net.sites if s_.role == "scale"}
    for site, lp in base.items():
        layer, _, role = site.rpartition(".")
        for mult, got in ((s, scaled[site]), (s * (3.0 if layer == "0" else 1.0), layered[site])):
            if role == "weight_scale":  # Gamma(2m + 1, ψN): a log-density of α log β − βλ + ...
                lam = values[site]
                alpha = 2 * shared[site] + 1
                want = lam.numel() * alpha * math.log(mult) - (mult - 1) * psi * n * float(
                    lam.sum()
                )
            elif role == "weight":  # Laplace(0, λ²/(ξN)): −log 2b − |θ|/b
                lam = values[f"{layer}.weight_scale"]
                theta = values[site]
                lam = lam if per == "weight" else lam[:, None].expand_as(theta)
                want = theta.numel() * math.log(mult) - (mult - 1) * xi * n * float(
                    (theta.abs() / lam.square()).sum()
                )
            else:  # the likelihood
                want = 0.0
            assert got - lp == pytest.approx(want, rel=1e-9, abs=1e-9), (site, mult)


@pytest.mark.parametrize("prior", ["gates", "halo"])
def test_the_fused_loss_uses_the_strength_the_pyro_model_does(prior):
    """At gates fixed open or closed, the fused loss and Trace_ELBO of the Pyro model agree
    (loss and gradients) with the strength away from 1: the closed forms the fused path
    uses are scaled as the model is."""
    torch.manual_seed(0)
    p = UnitGates(gamma=1.5) if prior == "gates" else HALO(xi=1e-2, psi=2e-2)
    net = sparsify(mlp(4, 5, 3, 2).to(F64), p)
    guide = MAP(net)
    with torch.no_grad():
        for q in guide.parameters():
            q.add_(0.05 * torch.randn_like(q))
    if prior == "gates":
        set_gates(guide, {"0": [1.0, 0.0, 1.0, 1.0, 0.0], "2": [0.0, 1.0, 1.0]})
    net.prior.strength = 2.5
    x, y = torch.randn(5, 4, dtype=F64), torch.tensor([0, 1, 0, 1, 1])
    params = [q for n, q in guide.named_parameters() if not n.startswith("gate_probs")]
    params += [q for _, q in net.deterministic_parameters()]
    assert_fused_equals_trace(net, guide, x, y, 50, params, seed=3, tol=1e-9)


def test_the_guides_optimal_prior_probability_follows_the_strength():
    net = sparsify(mlp(4, 5, 2), UnitGates(gamma=2.0))
    guide = MAP(net)
    set_gates(guide, {"0": [0.9, 0.5, 0.2, 1.0, 0.0]})
    theta = guide.gate_probs[key("0.gate")].detach()
    for s in (1.0, 3.0):
        net.prior.strength = s
        tr = poutine.trace(guide).get_trace(torch.randn(2, 4), None)
        torch.testing.assert_close(
            tr.nodes["0.gate_prob"]["value"].detach(),
            optimal_prior_prob(theta, torch.full_like(theta, 2.0 * s)),
        )
    net.prior.strength = 1.0


# --- exact resume ------------------------------------------------------------------------------
def _budget_run(kind: str):
    """``(make pair, fit options)`` of a budgeted fit of each kind."""
    if kind == "halo-weights":  # 24 steps, the cut at step 21
        return halo_pair, {"epochs": 3, "budget": steer(Budget(weights=0.2))}
    if kind == "gates-flops-removal":  # removal every 4 steps: a resume onto a cut-down net
        return lambda seed=0: gates_pair(seed, cost="flops"), {
            "epochs": 4,
            "budget": steer(Budget(flops=0.3)),
            "remove_dead": 4,
        }
    return gates_pair, {"epochs": 4, "budget": steer(Budget(units=0.3))}  # the cut at 28


@pytest.mark.parametrize(
    ("kind", "kill", "cut"),
    [
        ("gates-units", 14, False),  # steering: the multiplier is mid-flight
        ("gates-units", 32, True),  # after the cut: the gates are held
        ("halo-weights", 24, True),  # after the cut: the hold re-attached to the weights
        ("gates-flops-removal", 23, False),
    ],
)
def test_a_killed_budgeted_fit_resumes_exactly(class_data, tmp_path, monkeypatch, kind, kill, cut):
    kw = {**KW, "checkpoint_every": 2}
    make, options = _budget_run(kind)
    net, guide = make(0)
    straight = fit(net, class_data, guide, checkpoint=tmp_path / "a", **options, **kw)

    make, options = _budget_run(kind)  # a fresh controller, as a new process would have
    net, guide = make(0)
    kill_at_step(monkeypatch, kill)
    with pytest.raises(Killed):
        fit(net, class_data, guide, checkpoint=tmp_path / "b", **options, **kw)
    monkeypatch.undo()
    last = load_checkpoint(tmp_path / "b")
    stash = json.loads(last["stash"])["budget"]
    assert stash["cut"] is cut  # resumed from the phase meant

    make, options = _budget_run(kind)
    net, guide = make(1)  # other initial values: everything comes from the checkpoint
    resumed = fit(net, class_data, guide, checkpoint=tmp_path / "b", resume=True, **options, **kw)
    assert_same_fit(straight, resumed)
    assert [h["budget"] for h in records(resumed)] == [h["budget"] for h in records(straight)]


def test_a_resume_must_steer_to_the_same_budget(class_data, tmp_path):
    net, guide = gates_pair()
    fit(
        net, class_data, guide, epochs=1, budget=steer(Budget(units=0.3)), checkpoint=tmp_path, **KW
    )
    net, guide = gates_pair()
    with pytest.raises(CheckpointError, match="resume with the same budget"):
        fit(
            net, class_data, guide, epochs=2, budget=steer(Budget(units=0.5)),
            checkpoint=tmp_path, resume=True, **KW,
        )  # fmt: skip


@pytest.mark.parametrize(
    "budget",
    [Budget(flops=1e-4), Budget(units=0.01), Budget(units={"0": 0.01})],
    ids=["flops", "units", "per-layer"],
)
def test_a_budget_no_cut_can_meet_is_refused_before_training(class_data, tmp_path, budget):
    net, guide = gates_pair(cost="flops")
    with pytest.raises(ConfigError, match=r"smaller than the smallest network|leaves no unit"):
        fit(net, class_data, guide, epochs=1, budget=steer(budget), checkpoint=tmp_path, **KW)
    assert not any(tmp_path.iterdir())  # refused before anything was written
