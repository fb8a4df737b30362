"""HyperSparse / ART: the penalty and its gradient against the formula, the scale s, the α
schedule, the stop rule, fused = Trace_ELBO, bad input, and sparsify → fit → collapse →
extract end to end."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from bayesprune import collapse, extract, fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.guides import MAP
from bayesprune.priors import HyperSparse, from_config
from bayesprune.priors.hypersparse_penalty import hypersparse_penalty, hypersparse_scale
from bayesprune.priors.hypersparse_schedule import plan, stop_rule_fires, switch_epoch
from bayesprune.sites import Context
from tests.helpers import assert_fused_equals_trace, mlp, small_art


def direct_hs(ws: list[torch.Tensor], kappa: float) -> torch.Tensor:
    """The formula written out: s from the sorted magnitudes, HS per element, summed."""
    w = torch.cat([v.reshape(-1) for v in ws])
    a = w.abs()
    q = torch.sort(a.detach()).values[math.floor(kappa * a.numel())]
    s = math.asinh(1 / math.sqrt(2)) / q
    tanh_sum = torch.tanh(s * a).sum()
    return (a * tanh_sum / tanh_sum.detach() - a).sum()


@pytest.mark.parametrize("kappa", [0.5, 0.9, 0.98])
def test_penalty_value_and_gradient_match_the_formula(kappa):
    ws = [
        torch.randn(16, 8, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 16, dtype=torch.float64, requires_grad=True),
    ]
    mine = hypersparse_penalty(torch.cat([w.flatten() for w in ws]), kappa)
    ref = direct_hs(ws, kappa)
    torch.testing.assert_close(mine, ref)
    for g1, g2 in zip(torch.autograd.grad(mine, ws), torch.autograd.grad(ref, ws), strict=True):
        torch.testing.assert_close(g1, g2)
    # the closed form of the gradient: (Σ|w| / T) · s · sech²(s|w|) · sign(w)
    w = torch.cat([v.detach().flatten() for v in ws])
    s = hypersparse_scale(w.abs(), kappa)
    closed = (w.abs().sum() / torch.tanh(s * w.abs()).sum()) * s / torch.cosh(s * w) ** 2 * w.sign()
    got = torch.cat([g.flatten() for g in torch.autograd.grad(direct_hs(ws, kappa), ws)])
    torch.testing.assert_close(got, closed)


def test_scale_puts_the_quantile_at_tanh_asinh():
    a = torch.rand(1000, dtype=torch.float64) + 0.01
    for kappa in (0.1, 0.5, 0.95):
        s = hypersparse_scale(a, kappa)
        q = torch.sort(a).values[math.floor(kappa * a.numel())]
        torch.testing.assert_close(
            torch.tanh(s * q), torch.tanh(torch.tensor(math.asinh(1 / math.sqrt(2)), dtype=a.dtype))
        )
        assert torch.tanh(s * q) ** 2 == pytest.approx(1 / 3)


def test_last_layer_carries_the_coupled_term_over_all_layers():
    prior = HyperSparse(sparsity=0.8)
    net = sparsify(mlp(8, 16, 12, 3).double(), prior)
    prior.alpha = 1e-3
    values = {
        s.name: torch.randn(s.shape, dtype=torch.float64, requires_grad=True) for s in net.sites
    }
    ctx = Context(n_data=50, dtype=torch.float64)
    first, _, last = (net.layer_sites[n] for n in net.layer_names)
    assert prior.log_prob(first, values, ctx).item() == 0.0
    total = net.log_prior(values, ctx)
    ref = -1e-3 * 50 * direct_hs([values[s.name] for s in net.sites], 0.8)
    torch.testing.assert_close(total, ref)
    grads = torch.autograd.grad(total, list(values.values()))
    refs = torch.autograd.grad(ref, list(values.values()))
    for g1, g2 in zip(grads, refs, strict=True):
        torch.testing.assert_close(g1, g2)
        assert g1.abs().sum() > 0  # every layer feels the coupled term
    # the Pyro distribution of the last site gives the same density
    d = prior.distribution(last[0], values, ctx)
    torch.testing.assert_close(d.log_prob(values[last[0].name]), ref)


@pytest.mark.parametrize("alpha", [0.0, 2e-3])
def test_fused_loss_equals_trace_elbo(alpha):
    prior = HyperSparse(sparsity=0.7)
    net = sparsify(mlp(8, 16, 12, 3).double(), prior)
    prior.alpha = alpha
    guide = MAP(net)
    x, y = torch.randn(10, 8, dtype=torch.float64), torch.randint(0, 3, (10,))
    params = list(guide.parameters()) + [p for _, p in net.deterministic_parameters()]
    assert_fused_equals_trace(net, guide, x, y, 40, params, seed=0, tol=1e-9)


def test_alpha_follows_the_schedule_and_is_not_in_config():
    prior = HyperSparse(sparsity=0.9, lambda_init=1e-4, eta=1.5, warmup=2, window=1)
    history = [{"dense_val_accuracy": 0.9}, {"dense_val_accuracy": 0.9}]
    assert plan(prior, 0, []) == ("warmup", 0.0, 0)
    assert plan(prior, 1, history[:1]) == ("warmup", 0.0, 1)
    for e in range(2, 7):
        phase, alpha, i = plan(prior, e, history)
        assert phase == "regularise" and i == e - 2
        assert alpha == pytest.approx(1e-4 * 1.5 ** (e - 2))
        history.append({"pruned_val_accuracy": 0.5})
    prior.alpha = 0.123
    assert "alpha" not in prior.config() and from_config(prior.config()).config() == prior.config()


def test_stop_rule_fires_on_the_moving_average():
    prior = HyperSparse(sparsity=0.9, warmup=2, window=2, finetune=2)
    history = [
        {"dense_val_accuracy": 0.80},
        {"dense_val_accuracy": 0.90},  # reference: 0.85
        {"pruned_val_accuracy": 0.70},
        {"pruned_val_accuracy": 0.95},  # mean 0.825 < 0.85
        {"pruned_val_accuracy": 0.80},  # mean 0.875 >= 0.85: fires here (index 4)
        {"pruned_val_accuracy": 0.99},
    ]
    assert [stop_rule_fires(prior, history, e) for e in (2, 3, 4)] == [False, False, True]
    assert switch_epoch(prior, history) == 4
    assert plan(prior, 4, history[:4])[0] == "regularise"
    assert plan(prior, 5, history[:5]) == ("finetune", 0.0, 0)
    assert plan(prior, 6, history) == ("finetune", 0.0, 1)
    tolerant = HyperSparse(sparsity=0.9, warmup=2, window=2, tolerance=0.03)
    assert switch_epoch(tolerant, history) == 3
    capped = HyperSparse(sparsity=0.9, warmup=2, window=2, max_regularise=1)
    assert switch_epoch(capped, history) == 2


def test_end_to_end_sparsify_fit_collapse_extract():
    data = synthetic_classification(256, 128, 0, input_shape=(8,), n_classes=3, seed=1)
    torch.manual_seed(0)
    prior = small_art()
    net = sparsify(mlp(8, 16, 12, 3), prior)
    result = fit(net, data, epochs=20, batch_size=32, lr=1e-2, progress=False)
    phases = [h["phase"] for h in result.history]
    assert result.stopped_early and phases[:2] == ["warmup", "warmup"]
    assert phases[-2:] == ["finetune", "finetune"] and "regularise" in phases
    reg = [h for h in result.history if h["phase"] == "regularise"]
    assert [h["alpha"] for h in reg] == pytest.approx([1e-2 * 2.0**i for i in range(len(reg))])
    assert all("pruned_val_accuracy" in h for h in reg) and reg[-1]["stop_rule"]
    assert result.history[-1]["kept"] == pytest.approx(0.2, abs=2e-3)
    keep = collapse(net, result.guide, keep=0.2)
    default = collapse(net, result.guide)  # threshold 0: the fine-tune's exact zeros
    for name in keep:
        assert torch.equal(keep[name].weight_mask, default[name].weight_mask)
    small = extract(net, keep)
    x = data.val.x
    torch.testing.assert_close(small(x), net.predict(result.guide.point(), x))
    n_nonzero = sum(int((m.weight != 0).sum()) for m in small.modules() if isinstance(m, nn.Linear))
    assert n_nonzero == sum(k.n_kept for k in keep.values())


def test_fit_without_a_validation_split_fails_before_training():
    net = sparsify(mlp(8, 16, 12, 3), HyperSparse(sparsity=0.5))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with pytest.raises(ValueError, match="validation split"):
        fit(net, (x, y), epochs=1, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"sparsity": 0.0}, "sparsity"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.2}, "sparsity"),
        ({"sparsity": "0.9"}, "sparsity"),
        ({"lambda_init": 0.0}, "lambda_init"),
        ({"eta": 0.9}, "eta"),
        ({"warmup": 0}, "warmup"),
        ({"finetune": -1}, "finetune"),
        ({"window": 0}, "window"),
        ({"tolerance": 1.0}, "tolerance"),
        ({"max_regularise": 0}, "max_regularise"),
    ],
)
def test_bad_hyper_parameters_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HyperSparse(**kwargs)


def test_a_resumed_fit_gets_the_same_phases_and_alpha(tmp_path):
    import copy

    data = synthetic_classification(128, 64, 0, input_shape=(8,), n_classes=3, seed=2)
    torch.manual_seed(0)
    start = mlp(8, 16, 12, 3)

    def prior() -> HyperSparse:
        return small_art(warmup=1, finetune=1, max_regularise=2, tolerance=0.0)

    kw = dict(batch_size=32, lr=1e-2, progress=False)
    full_net = sparsify(copy.deepcopy(start), prior())
    full = fit(full_net, data, epochs=10, **kw)
    net = sparsify(copy.deepcopy(start), prior())
    fit(net, data, epochs=2, checkpoint=tmp_path, **kw)  # stops inside the regularisation
    net = sparsify(copy.deepcopy(start), prior())
    resumed = fit(net, data, epochs=10, checkpoint=tmp_path, resume=True, **kw)
    strip = ("seconds", "lr")
    assert [{k: v for k, v in h.items() if k not in strip} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in strip} for h in full.history
    ]
    for k, v in full.guide.point().items():
        torch.testing.assert_close(resumed.guide.point()[k], v)
