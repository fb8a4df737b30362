"""``BayesianNet``: deterministic parameters, ``run``, the Pyro model and ``predict``."""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn as nn
from pyro.poutine.util import site_is_subsample

from bayesprune import sparsify
from bayesprune.priors import HALO


def random_values(net):
    """A random value in the support of every site."""
    return {
        s.name: torch.rand(s.shape) + 0.5 if s.role == "scale" else torch.randn(s.shape)
        for s in net.sites
    }


@pytest.mark.parametrize(
    ("kind", "layers", "replaced"),
    [
        ("mlp", None, {"0.weight", "2.weight"}),
        ("mlp", "2", {"2.weight"}),
        ("conv", None, {"conv.weight", "fc.weight"}),
        ("conv", "conv", {"conv.weight"}),
    ],
)
def test_deterministic_parameters_exclude_replaced_weights(nets, kind, layers, replaced):
    module = nets[kind]()
    net = sparsify(module, HALO(), layers=layers)
    det = dict(net.deterministic_parameters())
    everything = dict(module.named_parameters())
    assert set(det) == set(everything) - replaced
    assert all(det[k] is everything[k] for k in det)  # the module's own Parameters
    assert {s.replaces for s in net.replacing} == replaced


def test_conv_net_keeps_batchnorm_and_biases_deterministic(nets):
    net = sparsify(nets["conv"](), HALO())
    assert sorted(n for n, _ in net.deterministic_parameters()) == [
        "bn.bias",
        "bn.weight",
        "conv.bias",
        "fc.bias",
    ]


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_run_equals_module_with_weights_loaded(nets, inputs, kind):
    module = nets[kind]()
    module.eval()  # BatchNorm with running statistics: a pure function of the weights
    net = sparsify(module, HALO())
    x = inputs(kind, 5)
    values = random_values(net)
    original = {k: v.clone() for k, v in module.state_dict().items()}

    loaded = copy.deepcopy(module)
    with torch.no_grad():
        for s in net.replacing:
            loaded.get_parameter(s.replaces).copy_(values[s.name])
    torch.testing.assert_close(net.run(values, x), loaded(x), rtol=0, atol=0)
    # the module itself is untouched by run
    for k, v in module.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_run_is_differentiable_in_the_values_and_the_module(nets):
    module = nets["mlp"]()
    net = sparsify(module, HALO())
    values = {k: v.requires_grad_() for k, v in random_values(net).items()}
    net.run(values, torch.randn(4, 8)).square().sum().backward()
    assert values["0.weight"].grad is not None
    assert values["0.weight_scale"].grad is None  # latent-only sites do not enter the net
    assert module[0].bias.grad is not None
    assert module[0].weight.grad is None  # replaced


def test_run_puts_the_parameters_back_even_when_the_network_fails(nets):
    module = nets["mlp"]()
    net = sparsify(module, HALO())
    before = {n: p for n, p in module.named_parameters()}
    with pytest.raises(RuntimeError):
        net.run(random_values(net), torch.randn(4, 3))  # wrong input width
    after = {n: p for n, p in module.named_parameters()}
    assert after.keys() == before.keys()
    assert all(after[n] is before[n] for n in before)  # the same Parameter objects


@pytest.mark.parametrize(("n_data", "scale"), [(None, 1.0), (5, 1.0), (40, 8.0), (7, 1.4)])
@pytest.mark.parametrize("per", ["weight", "unit"])
def test_model_trace_sites_and_observation_scale(nets, n_data, scale, per):
    net = sparsify(nets["mlp"](), HALO(xi=1e-3, psi=2e-3, per=per))
    x, y = torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1])
    trace = pyro.poutine.trace(net.model).get_trace(x, y, n_data=n_data)
    sample_sites = [
        n for n, s in trace.nodes.items() if s["type"] == "sample" and not site_is_subsample(s)
    ]
    assert sample_sites == [s.name for s in net.sites] + ["obs"]
    for s in net.sites:
        node = trace.nodes[s.name]
        assert not node["is_observed"]
        assert tuple(node["fn"].event_shape) == s.shape
        assert tuple(node["fn"].batch_shape) == ()
        assert tuple(node["value"].shape) == s.shape
        assert node["scale"] == 1.0  # the prior is not scaled, only the likelihood
    assert isinstance(trace.nodes["0.weight_scale"]["fn"].base_dist, dist.Gamma)
    assert isinstance(trace.nodes["0.weight"]["fn"].base_dist, dist.Laplace)

    obs = trace.nodes["obs"]
    assert obs["is_observed"]
    assert torch.equal(obs["value"], y)
    assert obs["scale"] == pytest.approx(scale)
    (plate,) = obs["cond_indep_stack"]
    assert plate.name == "data"
    assert plate.size == 5
    assert plate.full_size == (n_data if n_data is not None else 5)
    assert trace.nodes["_RETURN"]["value"].shape == (5, 3)


def test_model_log_joint_counts_the_likelihood_n_data_over_batch_times(nets):
    net = sparsify(nets["mlp"](), HALO(xi=0.1, psi=0.1))
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    conditioned = pyro.poutine.condition(net.model, data=random_values(net))

    def log_joint(n_data):
        tr = pyro.poutine.trace(conditioned).get_trace(x, y, n_data=n_data)
        tr.compute_log_prob()
        return tr.nodes["obs"]["log_prob_sum"], tr.log_prob_sum(), tr.nodes["_RETURN"]["value"]

    obs4, total4, logits = log_joint(4)
    obs12, total12, _ = log_joint(12)
    torch.testing.assert_close(obs12, 3 * obs4)
    torch.testing.assert_close(obs4, -nn.functional.cross_entropy(logits, y, reduction="sum"))
    # the prior part depends on n_data only through the hyper-parameters, not the data plate
    assert not torch.allclose(total12 - obs12, total4 - obs4)


def test_model_without_targets_samples_the_observation(nets):
    net = sparsify(nets["mlp"](), HALO())
    trace = pyro.poutine.trace(net.model).get_trace(torch.randn(6, 8))
    assert not trace.nodes["obs"]["is_observed"]
    assert trace.nodes["obs"]["value"].shape == (6,)


def test_forward_is_the_model(nets):
    net = sparsify(nets["mlp"](), HALO())
    trace = pyro.poutine.trace(net).get_trace(torch.randn(3, 8), torch.tensor([0, 1, 2]))
    assert "obs" in trace.nodes


@pytest.mark.parametrize("training", [True, False])
def test_predict_uses_eval_mode_and_restores_the_mode(nets, training):
    module = nets["conv"]()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-1, 1)
        module.bn.running_var.uniform_(0.5, 2)
    module.train(training)
    net = sparsify(module, HALO())
    values = random_values(net)
    x = torch.randn(7, 1, 6, 6)
    out = net.predict(values, x, batch_size=3)
    assert module.training is training
    assert all(m.training is training for m in module.modules())
    module.eval()
    torch.testing.assert_close(out, net.run(values, x))
    assert not out.requires_grad


def test_predict_restores_the_mode_when_the_network_fails(nets):
    module = nets["mlp"]()
    module.train()
    net = sparsify(module, HALO())
    with pytest.raises(RuntimeError):
        net.predict(random_values(net), torch.randn(2, 5))  # wrong input width
    assert module.training


def test_site_lookup_and_initial_values(nets):
    module = nets["mlp"]()
    net = sparsify(module, HALO(init_scale=0.5))
    assert net.site("2.weight").shape == (3, 16)
    with pytest.raises(KeyError, match="no site named 'fc.weight'"):
        net.site("fc.weight")
    w0 = net.initial_value(net.site("0.weight"))
    assert torch.equal(w0, module[0].weight)
    assert w0.data_ptr() != module[0].weight.data_ptr()
    assert torch.equal(net.initial_value(net.site("0.weight_scale")), torch.full((16, 8), 0.5))


def test_device_dtype_and_context_follow_the_module(nets):
    net = sparsify(nets["mlp"]().double(), HALO())
    assert net.dtype == torch.float64
    assert net.device == torch.device("cpu")
    ctx = net.context(123)
    assert (ctx.n_data, ctx.dtype) == (123, torch.float64)
    trace = pyro.poutine.trace(net.model).get_trace(torch.randn(2, 8, dtype=torch.float64))
    assert all(trace.nodes[s.name]["value"].dtype == torch.float64 for s in net.sites)
