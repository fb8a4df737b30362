"""Gates on attention heads (UnitGates on nn.MultiheadAttention): sites, what a gate
multiplies, the ELBO against Pyro's, prices, bad layers, and a fit."""

from __future__ import annotations

from unittest import mock

import pyro
import pytest
import torch
from pyro.infer import Predictive

import bayesprune as bp
from bayesprune.data import synthetic_classification
from bayesprune.errors import UnsupportedError
from bayesprune.guides import MAP, MeanField
from bayesprune.guides.base import key
from bayesprune.inference import FusedELBO, TraceELBO
from bayesprune.metrics import count_flops
from bayesprune.priors import HALO, UnitGates
from bayesprune.priors.unit_costs import unit_costs
from bayesprune.pruning import dead_units_keep, remove_units
from tests.helpers import (
    VIT_LAYERS,
    AttnNet,
    SelfAttention,
    configuration_weight,
    configurations,
    forced_gates,
    manual_attention,
    set_gates,
    small_vit,
)

F64 = torch.float64


# --- sites ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_one_gate_per_head_and_no_weight_sites(batch_first, bias):
    module = SelfAttention(12, 3, batch_first=batch_first, bias=bias)
    net = bp.sparsify(module, UnitGates(weight_prior=HALO()), layers="attn")
    assert [(s.name, s.role, s.shape) for s in net.sites] == [
        ("attn.gate_prob", "gate_prob", (3,)),
        ("attn.gate", "gate", (3,)),
    ]
    meta = net.site("attn.gate").meta
    assert (meta["place"], meta["param"], meta["repeat"], meta["dim"]) == (
        "heads",
        "out_proj.weight",
        4,
        1,
    )
    assert net.replacing == ()  # the attention weights stay deterministic parameters
    assert {n for n, _ in net.deterministic_parameters()} >= {"attn.in_proj_weight"}


def test_default_selection_gates_heads_never_the_out_projection():
    net = bp.sparsify(small_vit(), UnitGates())
    names = set(net.layer_names)
    assert {f"encoder.layers.encoder_layer_{i}.self_attention" for i in (0, 1)} <= names
    assert not any(n.endswith("out_proj") for n in names)


# --- what a gate multiplies ---------------------------------------------------------------------


@pytest.mark.parametrize("z", [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0] * 4])
def test_a_gate_multiplies_exactly_its_heads_output(z):
    module = SelfAttention(8, 4, batch_first=True).to(F64)
    net = bp.sparsify(module, UnitGates(), layers="attn")
    x = torch.randn(3, 5, 8, dtype=F64)
    z = torch.tensor(z, dtype=F64)
    want = manual_attention(module.attn, x, z)
    out = net.run({"attn.gate": z}, x)  # training mode: the F.multi_head_attention path
    torch.testing.assert_close(out, want)
    # eval, no gradients: nn.MultiheadAttention's fused kernel, which reads out_proj.weight
    native = torch._native_multi_head_attention
    with mock.patch.object(torch, "_native_multi_head_attention", wraps=native) as fused:
        got = net.predict({"attn.gate": z}, x)
    assert fused.called
    torch.testing.assert_close(got, want.detach())
    assert module.attn.out_proj.weight.abs().min() > 0  # put back after the run


def test_the_gate_gets_the_straight_through_gradient():
    module = SelfAttention(8, 4, batch_first=True).to(F64)
    net = bp.sparsify(module, UnitGates(), layers="attn")
    x = torch.randn(2, 3, 8, dtype=F64)
    z = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64, requires_grad=True)
    c = torch.randn(2, 3, 8, dtype=F64)
    (grad,) = torch.autograd.grad((net.run({"attn.gate": z}, x) * c).sum(), z)
    ones = torch.ones(4, dtype=F64, requires_grad=True)
    (want,) = torch.autograd.grad((manual_attention(module.attn, x, ones) * c).sum(), ones)
    torch.testing.assert_close(grad, want)  # the loss is linear in each gate: exact slope


# --- the ELBO: fused and Pyro's Trace_ELBO --------------------------------------------------


def test_fused_and_trace_elbo_have_the_same_expectation():
    """Enumerating the 2 head gates and 2 unit gates: the expected fused loss equals the
    expected Trace_ELBO loss though they differ draw by draw (as for Linear units)."""
    torch.manual_seed(3)
    net = bp.sparsify(AttnNet().to(F64), UnitGates(gamma=3.0), layers=["attn", "fc"])
    guide = MAP(net)
    set_gates(guide, {"attn": [0.3, 0.8], "fc": [0.6, 0.25]})
    x, y = torch.randn(4, 3, 4, dtype=F64), torch.tensor([0, 1, 2, 1])
    thetas = [guide.gate_probs[key(s.name)].detach() for s in net.gates]
    expect = {"fused": 0.0, "trace": 0.0}
    gaps = []
    for zs in configurations([2, 2]):
        w = float(configuration_weight(zs, thetas))
        losses = {}
        for est in (FusedELBO(), TraceELBO()):
            with forced_gates(zs) as drawn:
                losses[est.name] = float(est(net, guide, x, y, 40).detach())
            assert len(drawn) == 2
        for k in expect:
            expect[k] += w * losses[k]
        gaps.append(abs(losses["fused"] - losses["trace"]))
    assert max(gaps) > 0.1
    assert expect["fused"] == pytest.approx(expect["trace"], rel=1e-10)


def test_pyro_predictive_and_svi_run_the_model():
    data = synthetic_classification(n_train=32, input_shape=(3, 4), n_classes=3, seed=2)
    net = bp.sparsify(AttnNet(), UnitGates(gamma=1.0, init_prob=0.7), layers=["attn", "fc"])
    guide = MeanField(net, init_scale=0.01)
    x, y = data.train.x, data.train.y
    draws = Predictive(net.model, guide=guide, num_samples=6)(x)
    assert draws["attn.gate"].shape[0] == 6 and draws["attn.gate"].shape[-1] == 2
    assert set(draws["attn.gate"].unique().tolist()) <= {0.0, 1.0}
    svi = pyro.infer.SVI(net.model, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    before = net.module.attn.in_proj_weight.detach().clone()
    losses = [svi.step(x, y, n_data=32) for _ in range(30)]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert not torch.equal(before, net.module.attn.in_proj_weight)  # trained by ML


# --- prices ---------------------------------------------------------------------------------


def test_a_heads_price_is_its_share_of_the_layer():
    module = AttnNet(embed_dim=8, num_heads=4, hidden=6)
    x = torch.zeros(1, 5, 8)  # 5 tokens
    costs = unit_costs(module, ["attn", "fc"], x)
    d, e, length = 2, 8, 5
    params = 3 * d * e + 3 * d + e * d  # q, k, v rows and biases; out-projection columns
    macs = length * e * d * 3 + 2 * length * length * d + length * d * e
    assert costs["attn"]["params"].tolist() == [params] * 4
    assert costs["attn"]["flops"].tolist() == [macs] * 4
    assert count_flops(module, x)["layers"][0]["macs"] == 4 * macs  # the layer's own count
    # a unit of fc: its row and bias, and out's column; its MACs on 5 tokens and in out
    assert costs["fc"]["params"].tolist() == [8 + 1 + 3] * 6
    net = bp.sparsify(module, UnitGates(gamma=2.0, cost="params"), ["attn", "fc"], example_input=x)
    gammas = {s.layer: torch.tensor(s.meta["gamma"]) for s in net.gates}
    assert float(gammas["attn"][0] / gammas["fc"][0]) == pytest.approx(params / 12.0)
    mean = torch.cat(list(gammas.values())).mean()
    torch.testing.assert_close(mean, torch.tensor(2.0))


# --- bad layers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kdim": 4, "vdim": 4}, "separate q/k/v"),
        ({"add_bias_kv": True}, "add_bias_kv"),
        ({"add_zero_attn": True}, "add_zero_attn"),
    ],
)
def test_attention_layers_whose_heads_cannot_be_separated_are_refused(kwargs, match):
    with pytest.raises(UnsupportedError, match=f"'attn'.*{match}"):
        bp.sparsify(SelfAttention(8, 2, **kwargs), UnitGates(), layers="attn")


def test_the_out_projection_is_refused_by_name():
    with pytest.raises(UnsupportedError, match="'attn.out_proj'.*out-projection"):
        bp.sparsify(SelfAttention(8, 2), UnitGates(), layers="attn.out_proj")


# --- fitting --------------------------------------------------------------------------------


def test_a_tiny_fit_with_head_gates_live_removal_and_a_budget():
    data = synthetic_classification(n_train=48, n_val=16, input_shape=(3, 4), n_classes=3, seed=1)
    net = bp.sparsify(AttnNet(num_heads=2, hidden=4), UnitGates(gamma=20.0), layers=["attn", "fc"])
    guide = MAP(net)
    result = bp.fit(
        net, data, guide, epochs=3, batch_size=16, lr=0.05, remove_dead=True, progress=False
    )
    assert set(result.history[-1]["units"]) == {"attn", "fc"}
    assert "attn" not in result.history[-1]["removed"]  # heads go at extract, not live
    assert net.module.attn.num_heads == 2
    keep = bp.collapse(net, guide)
    assert keep["attn"].n_units == 2
    budgeted = bp.sparsify(AttnNet(num_heads=2, hidden=4), UnitGates(gamma=1.0), ["attn", "fc"])
    g = MAP(budgeted)
    bp.fit(budgeted, data, g, epochs=3, batch_size=16, budget=bp.Budget(units=0.5), progress=False)
    kept = bp.collapse(budgeted, g, budget=bp.Budget(units=0.5))
    assert sum(k.n_kept for k in kept.values()) <= 3  # half of 2 heads + 4 units


def test_diagnose_reports_head_gates_like_unit_gates():
    data = synthetic_classification(n_train=32, n_val=16, input_shape=(3, 4), n_classes=3, seed=2)
    net = bp.sparsify(AttnNet(), UnitGates(gamma=1.0), layers=["attn", "fc"])
    idata = bp.diagnose(net, MeanField(net, init_scale=0.01), data, num_samples=4)
    for layer in ("attn", "fc"):
        for role in ("gate", "gate_prob"):
            v = idata.posterior[f"{layer}.{role}"]
            assert v.dims == ("chain", "draw", f"{layer}_unit") and v.shape == (1, 4, 2)


def test_live_removal_cuts_mlp_units_of_a_vit_and_leaves_its_heads():
    vit = small_vit()
    x = torch.randn(2, 1, 28, 28)
    net = bp.sparsify(vit, UnitGates(), layers=VIT_LAYERS, example_input=x[:1])
    guide = MAP(net)
    block = "encoder.layers.encoder_layer_0"
    set_gates(
        guide, {f"{block}.mlp.0": [0.0] * 30 + [0.9] * 34, f"{block}.self_attention": [0, 1, 1, 0]}
    )
    before = net.predict(guide.point(), x)
    keep = dead_units_keep(net, guide)
    assert set(keep) == {f"{block}.mlp.0", "encoder.layers.encoder_layer_1.mlp.0"}
    remove_units(net, guide, keep)
    assert vit.encoder.layers[0].mlp[0].out_features == 34
    assert vit.encoder.layers[0].self_attention.num_heads == 4
    torch.testing.assert_close(net.predict(guide.point(), x), before)
