"""Pyro's own machinery on our model and guides: plain ``SVI`` trains what ``fit`` trains,
``Predictive`` returns every site, and the param store mirrors the modules."""

from __future__ import annotations

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

import bayesprune as bp
from bayesprune.data import synthetic_classification
from bayesprune.guides import MAP, MeanField
from bayesprune.priors import HALO, UnitGates
from tests.conftest import mlp

N = 64


def _setup(prior: str, guide: str):
    data = synthetic_classification(n_train=N, input_shape=(8,), n_classes=3, seed=1)
    p = UnitGates(gamma=2.0, init_prob=0.7) if prior == "gates" else HALO(xi=1e-3, psi=1e-3)
    net = bp.sparsify(mlp(), p)
    g = MeanField(net, init_scale=1e-2) if guide == "mean_field" else MAP(net)
    return net, g, data.train.x, data.train.y


def _trained(net, guide) -> dict[str, torch.Tensor]:
    """Everything ``fit`` hands its optimizer: the guide's and the net's deterministic
    parameters, by name."""
    out = {f"guide.{n}": p for n, p in guide.named_parameters()}
    out.update({f"net.{n}": p for n, p in net.deterministic_parameters()})
    return out


@pytest.mark.parametrize(
    ("prior", "guide", "elbo"),
    [
        ("gates", "mean_field", Trace_ELBO),
        ("gates", "mean_field", TraceGraph_ELBO),
        ("halo", "map", Trace_ELBO),
        # analytic KL terms need a fully reparametrised guide: no discrete gates
        ("halo", "mean_field", TraceMeanField_ELBO),
    ],
)
def test_plain_svi_moves_every_trained_tensor_and_lowers_the_loss(elbo, prior, guide):
    net, g, x, y = _setup(prior, guide)
    before = {k: v.detach().clone() for k, v in _trained(net, g).items()}
    svi = SVI(net.model, g, pyro.optim.Adam({"lr": 1e-2}), elbo())
    losses = [svi.step(x, y, n_data=N) for _ in range(100)]
    assert sum(losses[-10:]) < sum(losses[:10])
    for k, p in _trained(net, g).items():
        assert not torch.equal(p.detach(), before[k]), f"{k} did not move"
    # the param store holds exactly the tensors fit trains, no others
    store = pyro.get_param_store()
    assert {id(store._params[n]) for n in store} == {id(p) for p in _trained(net, g).values()}


def test_plain_svi_keeps_gate_probabilities_projected():
    net, g, x, y = _setup("gates", "mean_field")
    svi = SVI(net.model, g, pyro.optim.Adam({"lr": 0.5}), Trace_ELBO())
    for _ in range(20):
        svi.step(x, y, n_data=N)
        g(x, y)  # the Pyro guide's call projects what the step pushed out
        theta = torch.cat([p.detach() for p in g.gate_probs.values()])
        assert bool(((theta >= 0) & (theta <= 1)).all())


@pytest.mark.parametrize(("prior", "guide"), [("gates", "mean_field"), ("halo", "map")])
def test_fit_with_trace_loss_agrees_with_plain_svi_step_for_step(prior, guide):
    """``fit`` minimises the per-example negative ELBO with one torch Adam: plain SVI with
    Pyro's Adam on the model and guide scaled by 1/N takes the same steps."""
    steps = 15
    net_a, g_a, x, y = _setup(prior, guide)
    result = bp.fit(
        net_a,
        (x, y),
        g_a,
        epochs=steps,
        batch_size=N,
        lr=1e-2,
        loss="trace",
        seed=3,
        progress=False,
        log_every=1,
    )

    torch.manual_seed(0)  # the same starting network and guide
    pyro.clear_param_store()
    net_b, g_b, _, _ = _setup(prior, guide)
    torch.manual_seed(3)  # fit's seed
    scale = pyro.poutine.scale(scale=1.0 / N)
    svi = SVI(scale(net_b.model), scale(g_b), pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, y, n_data=N) for _ in range(steps)]

    torch.testing.assert_close(
        torch.tensor(result.elbo), torch.tensor(losses), rtol=1e-4, atol=1e-5
    )
    a, b = _trained(net_a, g_a), _trained(net_b, g_b)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].detach(), b[k].detach(), rtol=1e-4, atol=1e-5, msg=k)


def test_predictive_returns_every_site_and_the_observation():
    net, g, x, y = _setup("gates", "mean_field")
    draws = Predictive(net.model, guide=g, num_samples=7)(x[:5], n_data=N)
    assert set(draws) == {s.name for s in net.sites} | {"obs"}
    for s in net.sites:  # Pyro pads latent sites with the data plate's dimension
        assert draws[s.name].shape == (7, 1, *s.shape)
    assert draws["obs"].shape == (7, 5)
    gates = torch.cat([draws[s.name] for s in net.gates], -1)
    assert set(gates.unique().tolist()) <= {0.0, 1.0}


def test_a_stale_param_store_entry_is_replaced_by_the_guide_parameter():
    net, g, x, y = _setup("halo", "map")
    g(x, y)
    old = dict(pyro.get_param_store()._params)
    net2, g2, _, _ = _setup("halo", "map")  # same names, new tensors
    g2(x, y)
    net2.model(x, y, n_data=N)
    store = pyro.get_param_store()
    for n in store:
        assert store._params[n] is not old.get(n)
    assert {id(store._params[n]) for n in store} == {id(p) for p in _trained(net2, g2).values()}


def test_several_particles_before_one_backward_with_projected_parameters():
    """The Pyro guide projects on every call; ``differentiable_loss`` with several particles
    runs it several times before one backward, so the projection must not touch the
    version of a tensor an earlier particle's graph saved (an in-place clamp would)."""
    data = synthetic_classification(n_train=N, input_shape=(8,), n_classes=3, seed=1)
    net = bp.sparsify(mlp(), UnitGates(gamma=2.0, weight_prior=HALO(xi=1e-3, psi=1e-3)))
    g = MAP(net, positive="projected")
    elbo = Trace_ELBO(num_particles=3)
    opt = torch.optim.Adam(g.parameters(), lr=0.5)
    for _ in range(3):  # big steps push parameters out of their bounds between calls
        loss = elbo.differentiable_loss(net.model, g, data.train.x, data.train.y, n_data=N)
        opt.zero_grad()
        loss.backward()  # raises if a saved tensor was modified in place
        opt.step()
    g(data.train.x)
    for p, lo, hi in g.bounds():
        assert float(p.detach().min()) >= lo
        assert hi is None or float(p.detach().max()) <= hi
