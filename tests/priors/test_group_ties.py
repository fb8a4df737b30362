"""Unit gates tied across the groups of a grouped convolution: which layers are tied, their
sites and prices, and the model they define (forward, ELBO terms, Pyro's own SVI)."""

from __future__ import annotations

import copy
import logging

import pyro
import pyro.optim
import pytest
import torch
import torch.nn as nn
from pyro.infer import SVI, Trace_ELBO

from bayesprune import sparsify
from bayesprune.errors import UnsupportedError
from bayesprune.guides import MAP, MeanField
from bayesprune.guides.base import key
from bayesprune.priors import UnitGates
from bayesprune.priors.gates import gate_constants, probs_key
from bayesprune.priors.group_ties import group_tiles, is_grouped, tied_units
from bayesprune.priors.unit_costs import complexity_prices, unit_costs
from tests.helpers import CatIntoGrouped, GcdNet, GroupedConvNet, randomise_batchnorm

X = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def tied_net(prior: UnitGates | None = None, **kwargs):
    torch.manual_seed(0)
    module = randomise_batchnorm(GroupedConvNet(**kwargs))
    return sparsify(module, prior or UnitGates(), example_input=X[:1])


# --- which layers are tied ---------------------------------------------------------------


def test_inputs_and_outputs_of_a_grouped_conv_are_tied_with_its_channels_per_group():
    module = GroupedConvNet()
    # pw: 2 input channels per group of gc (period 2, 4 units per gate); gc: 3 outputs per
    # group (period 3); out reads gc with an ordinary conv: not tied
    assert group_tiles(module, ["pw", "gc", "out"], X) == {"pw": 4, "gc": 4}
    # g1: period gcd(4, 6) = 2; g2: its own 2 outputs per group
    assert group_tiles(GcdNet(), ["g1", "g2"], X) == {"g1": 6, "g2": 2}
    assert is_grouped(module.gc) and not is_grouped(nn.Conv2d(4, 4, 3, groups=4))


def test_depthwise_convs_and_plain_nets_are_not_tied():
    dw = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.ReLU())
    assert group_tiles(dw, ["0", "2"], X) == {}
    net = sparsify(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), UnitGates())
    assert all("tile" not in s.meta for s in net.sites)


def test_units_that_are_only_part_of_a_grouped_convs_channels_are_left_out_or_refused(caplog):
    # chosen by the prior: left out, and the log says why
    with caplog.at_level(logging.INFO, logger="bayesprune.nn.sparsify"):
        net = sparsify(CatIntoGrouped(), UnitGates(), example_input=X[:1])
    assert net.layer_names == ("gc",)
    assert "grouped convolution" in caplog.text and "'a'" in caplog.text
    # chosen by the user: refused at sparsify time, naming the layer and the conv
    with pytest.raises(UnsupportedError, match=r"layer 'a'.*grouped convolution 'gc'.*layers="):
        sparsify(CatIntoGrouped(), UnitGates(), layers=["a", "gc"], example_input=X[:1])


def test_without_an_example_input_the_gates_are_not_tied_and_a_warning_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="bayesprune.priors.gates"):
        net = sparsify(GroupedConvNet(), UnitGates())
    assert "grouped convolutions" in caplog.text and "example_input" in caplog.text
    assert [s.shape for s in net.gates] == [(8,), (12,), (5,)]


# --- sites and prices ----------------------------------------------------------------------


def test_a_tied_layer_has_one_gate_per_in_group_position():
    net = tied_net()
    shapes = {s.name: (s.shape, s.meta.get("tile")) for s in net.sites if "gate" in s.role}
    assert shapes == {
        "pw.gate_prob": ((2,), 4),
        "pw.gate": ((2,), 4),
        "gc.gate_prob": ((3,), 4),
        "gc.gate": ((3,), 4),
        "out.gate_prob": ((5,), None),
        "out.gate": ((5,), None),
    }
    g = MAP(net)
    assert {k: tuple(p.shape) for k, p in g.gate_probs.items()} == {
        "pw/gate": (2,),
        "gc/gate": (3,),
        "out/gate": (5,),
    }


def test_a_tied_gate_costs_what_its_units_cost():
    net = tied_net(UnitGates(gamma=3.0))
    assert net.site("pw.gate").meta["gamma"] == (12.0, 12.0)  # 4 units of 3.0 each
    assert net.site("out.gate").meta["gamma"] == (3.0,) * 5
    for cost in ("flops", "params", "mixed"):
        net = tied_net(UnitGates(gamma=3.0, cost=cost))
        layers = list(net.layer_names)
        per_unit = complexity_prices(3.0, cost, unit_costs(GroupedConvNet(), layers, X[:1]))
        for name, tile in (("pw", 4), ("gc", 4), ("out", 1)):
            want = per_unit[name].reshape(tile, -1).sum(0)
            got = torch.tensor(net.site(f"{name}.gate").meta["gamma"])
            torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-6, atol=0), (cost, name)


def test_the_gate_terms_equal_the_untied_ones_with_the_units_constrained_equal():
    """``Σ γ_g θ_g`` over tied gates is ``Σ γ_u θ_u`` over the units with ``θ_u = θ_{u mod
    period}``: the price part of the ELBO is the untied one restricted to tied θs."""
    tied = tied_net(UnitGates(gamma=2.0, cost="flops"))
    untied_gammas = complexity_prices(
        2.0, "flops", unit_costs(GroupedConvNet(), list(tied.layer_names), X[:1])
    )
    for name, tile in (("pw", 4), ("gc", 4)):
        s = tied.site(f"{name}.gate")
        theta = torch.rand(s.shape, dtype=torch.float64)
        gamma, _ = gate_constants(s.meta["gamma"], torch.device("cpu"), torch.float64)
        untied = untied_gammas[name].double()
        assert float(gamma @ theta) == pytest.approx(float(untied @ theta.repeat(tile)), rel=1e-9)


def test_kept_fraction_and_units_alive_count_units():
    net = tied_net()
    g = MAP(net)
    with torch.no_grad():
        g.gate_probs["pw/gate"].copy_(torch.tensor([0.0, 0.9]))
        g.gate_probs["gc/gate"].copy_(torch.tensor([0.2, 0.9, 0.9]))
        g.gate_probs["out/gate"].copy_(torch.tensor([0.9, 0.9, 0.0, 0.0, 0.0]))
    point = g.point()
    assert net.prior.units_alive(net, point) == {"pw": 4, "gc": 12, "out": 2}
    assert net.prior.kept_fraction(net, point) == pytest.approx((4 + 8 + 2) / (8 + 12 + 5))


# --- the model -----------------------------------------------------------------------------


def _zeroed_by_hand(module: nn.Module, z: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``module`` whose units with a closed gate output exactly 0: BatchNorm
    scale and shift of the channel zeroed (pw, gc), weight row and bias (out)."""
    m = copy.deepcopy(module)
    units = {"pw": (m.bn1, 2), "gc": (m.bn2, 3), "out": (m.out, 5)}
    with torch.no_grad():
        for name, (target, period) in units.items():
            closed = [c for c in range(len(target.weight)) if z[name][c % period] == 0]
            target.weight[closed] = 0.0
            target.bias[closed] = 0.0
    return m


@pytest.mark.parametrize("seed", range(4))
def test_the_forward_with_hard_gates_zeroes_every_tied_unit(seed):
    net = tied_net()
    g = MAP(net)
    values = g.point()
    gen = torch.Generator().manual_seed(seed)
    z = {s.layer: torch.randint(0, 2, s.shape, generator=gen).float() for s in net.gates}
    for s in net.gates:
        values[s.name] = z[s.layer]
    got = net.predict(values, X)
    want = _zeroed_by_hand(net.module, z).eval()(X)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, net.module.eval()(X))  # the gates did something


def test_post_activation_gates_on_a_grouped_convs_outputs_act_like_pre_activation_ones():
    """``gc``'s tied gates after its ReLU (on ``out``'s input channels) compute the same
    network as before it, for hard gates; ``pw`` (read by the grouped conv) cannot be gated
    after its activation."""
    net = sparsify(GroupedConvNet(), UnitGates(place="post-activation"), example_input=X[:1])
    with pytest.raises(UnsupportedError, match="'pw'.*grouped"):
        net.predict(MAP(net).point(), X)
    nets = [
        sparsify(
            randomise_batchnorm(GroupedConvNet(), torch.Generator().manual_seed(1)),
            UnitGates(place=place),
            layers=["gc", "out"],
            example_input=X[:1],
        )
        for place in ("pre-activation", "post-activation")
    ]
    nets[1].module.load_state_dict(nets[0].module.state_dict())
    values = MAP(nets[0]).point()
    values["gc.gate"] = torch.tensor([1.0, 0.0, 1.0])
    outs = [n.predict(values, X) for n in nets]
    torch.testing.assert_close(outs[0], outs[1])
    assert nets[1].site("gc.gate").meta["tile"] == 4


def test_pyros_own_trace_elbo_trains_tied_gates():
    torch.manual_seed(0)
    net = tied_net(UnitGates(gamma=1.0, init_prob=0.7))
    g = MeanField(net, init_scale=1e-2)
    y = torch.randint(0, 3, (X.shape[0],))
    before = {k: p.detach().clone() for k, p in g.gate_probs.items()}
    svi = SVI(net.model, g, pyro.optim.Adam({"lr": 5e-2}), Trace_ELBO())
    losses = [svi.step(X, y, n_data=X.shape[0]) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))
    for k, p in g.gate_probs.items():
        assert p.shape == before[k].shape and not torch.equal(p.detach(), before[k]), k
    # Pyro's trace holds the tied gate sites at their own (smaller) shape
    trace = pyro.poutine.trace(net.model).get_trace(X, y)
    assert trace.nodes["pw.gate"]["value"].shape == (2,)
    assert trace.nodes["gc.gate_prob"]["value"].shape == (3,)


def test_the_fused_values_of_a_tied_gate_are_per_gate():
    net = tied_net()
    values, _ = MAP(net).rsample()
    assert values["pw.gate"].shape == values[probs_key("pw.gate")].shape == (2,)
    assert key("pw.gate") == "pw/gate"


def test_tied_units_lists_every_group_position():
    assert tied_units(torch.tensor([0, 2]), 3, 2).tolist() == [0, 2, 3, 5]
    assert tied_units(torch.tensor([], dtype=torch.long), 3, 2).tolist() == []
