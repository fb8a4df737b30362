"""No traps after a fit: weight decay on weights only, the caller's RNG left as it was, the
loss named for what it is, ``epochs=0`` a logged no-op."""

from __future__ import annotations

import logging

import pytest
import torch

from bayesprune import fit, sparsify
from bayesprune.errors import NonFiniteLossError
from bayesprune.guides import MAP, MeanField
from bayesprune.inference.optimizer import make_optimizer
from bayesprune.priors import HALO, UnitGates

KW = {"batch_size": 16, "lr": 1e-2, "progress": False}


def _net(nets, prior):
    return sparsify(nets["mlp"](), prior)


def _decay_by_role(opt: torch.optim.Optimizer) -> dict[str, set[float]]:
    out: dict[str, set[float]] = {}
    for g in opt.param_groups:
        out.setdefault(g["role"], set()).add(g["weight_decay"])
    return out


# --- weight decay ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prior", "guide", "expected"),
    [
        (HALO, MAP, {"scale": {0.0}, "weight": {0.5}, "deterministic": {0.5}}),
        # a mean-field weight role: the locations decay, the standard deviations do not
        (HALO, MeanField, {"scale": {0.0}, "weight": {0.5, 0.0}, "deterministic": {0.5}}),
        (
            UnitGates,
            MAP,
            {"gate": {0.0}, "weight": {0.5}, "deterministic": {0.5}},
        ),
    ],
)
def test_weight_decay_goes_to_weight_groups_only(nets, prior, guide, expected):
    net = _net(nets, prior())
    g = guide(net)
    opt = make_optimizer(net, g, "adam", lr=1e-3, weight_decay=0.5)
    assert _decay_by_role(opt) == expected
    if guide is MeanField:
        rho = {id(p) for p in g.rho.values()}
        for group in opt.param_groups:
            if any(id(p) in rho for p in group["params"]):
                assert group["weight_decay"] == 0.0
                assert all(id(p) in rho for p in group["params"])


def test_without_weight_decay_the_groups_are_one_per_role(nets):
    net = _net(nets, HALO())
    opt = make_optimizer(net, MeanField(net), "adam", lr=1e-3)
    assert [g["role"] for g in opt.param_groups] == ["scale", "weight", "deterministic"]


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_with_a_zero_loss_gradient_only_weights_decay(nets, name):
    net = _net(nets, UnitGates())
    g = MAP(net)
    opt = make_optimizer(net, g, name, lr=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in g.named_parameters()}
    bias = net.module[0].bias.detach().clone()
    for group in opt.param_groups:
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in g.named_parameters():
        if n.startswith("gate_probs"):
            assert torch.equal(p, before[n]), n  # θ did not move
        else:
            assert p.abs().sum() < before[n].abs().sum(), n  # a weight shrank
    assert net.module[0].bias.abs().sum() < bias.abs().sum()


def test_fit_passes_weight_decay_to_weight_groups_only(nets, class_data):
    seen = {}

    class Look:
        def on_fit_start(self, state):
            seen.update(_decay_by_role(state.optimizer))

    net = _net(nets, UnitGates())
    fit(net, class_data, MAP(net), epochs=1, optimizer="adamw", weight_decay=0.3,
        callbacks=[Look()], **KW)  # fmt: skip
    assert seen == {"gate": {0.0}, "weight": {0.3}, "deterministic": {0.3}}


# --- RNG -----------------------------------------------------------------------------------------
def test_fit_leaves_the_callers_rng_as_it_was(nets, class_data):
    net = _net(nets, HALO())
    g = MeanField(net)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    fit(net, class_data, g, epochs=1, **KW)
    assert torch.equal(torch.get_rng_state(), state)


def test_fit_leaves_the_callers_rng_as_it_was_when_it_raises(nets, class_data, monkeypatch):
    net = _net(nets, HALO())
    monkeypatch.setattr(net.likelihood, "log_prob", lambda out, y: out.sum() * torch.nan)
    g = MeanField(net)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    with pytest.raises(NonFiniteLossError):
        fit(net, class_data, g, epochs=1, **KW)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_fit_leaves_the_callers_cuda_rng_as_it_was(nets, class_data):
    net = _net(nets, HALO())
    g = MeanField(net)
    torch.cuda.manual_seed(7)
    state = torch.cuda.get_rng_state()
    fit(net, class_data, g, epochs=1, device="cuda", **KW)
    assert torch.equal(torch.cuda.get_rng_state(), state)
    assert next(net.module.parameters()).is_cuda  # the module was moved in place (documented)


def test_the_fit_depends_on_its_seed_not_on_the_callers_rng(nets, class_data):
    results = []
    for caller_seed in (1, 2):
        torch.manual_seed(0)
        net = _net(nets, HALO())
        g = MeanField(net)
        torch.manual_seed(caller_seed)
        results.append(fit(net, class_data, g, epochs=1, seed=3, **KW))
    assert results[0].elbo == results[1].elbo
    for a, b in zip(results[0].guide.parameters(), results[1].guide.parameters(), strict=True):
        assert torch.equal(a, b)


# --- the loss's name -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prior", "guide", "label", "other"),
    [
        (HALO, MAP, "-log p/n", "-elbo/n"),  # every site a point mass: a log joint
        (HALO, MeanField, "-elbo/n", "-log p/n"),
        (UnitGates, MAP, "-elbo/n", "-log p/n"),  # Bernoulli gates: an ELBO over them
    ],
)
def test_epoch_lines_name_the_loss(nets, class_data, capsys, prior, guide, label, other):
    net = _net(nets, prior())
    result = fit(net, class_data, guide(net), epochs=1, batch_size=16, progress=True)
    out = capsys.readouterr().out
    assert f"epoch 1/1  {label} " in out and other not in out
    assert "loss" in result.final  # the history key is the same for both


# --- epochs=0 ------------------------------------------------------------------------------------
def test_zero_epochs_is_a_logged_no_op(nets, class_data, caplog, tmp_path):
    net = _net(nets, HALO())
    g = MAP(net)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="bayesprune.inference.fit"):
        result = fit(net, class_data, g, epochs=0, checkpoint=tmp_path, **KW)
    assert "epochs=0: nothing trained" in caplog.text
    assert result.history == [] and result.checkpoint is None
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())
    assert not (tmp_path / "last.pt").exists()


def test_resuming_at_or_past_epochs_logs_that_nothing_is_left(nets, class_data, caplog, tmp_path):
    net = _net(nets, HALO())
    fit(net, class_data, MAP(net), epochs=2, checkpoint=tmp_path, **KW)
    net = _net(nets, HALO())
    with caplog.at_level(logging.INFO, logger="bayesprune.inference.fit"):
        again = fit(net, class_data, MAP(net), epochs=2, checkpoint=tmp_path, resume=True, **KW)
    assert "at epoch 2 and epochs=2: nothing left to train" in caplog.text
    assert [h["epoch"] for h in again.history] == [1, 2]
    net = _net(nets, HALO())
    more = fit(net, class_data, MAP(net), epochs=3, checkpoint=tmp_path, resume=True, **KW)
    assert [h["epoch"] for h in more.history] == [1, 2, 3]  # the way to continue a fit


def test_gate_probabilities_train_at_the_prior_default_rate_unless_told(class_data):
    """Gate priors train θ at 1e-2 by default (``prior.default_role_lr``); ``role_lr`` wins."""
    for role_lr, want in ((None, 1e-2), ({"gate": 0.3}, 0.3)):
        net = sparsify(torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(),
                                           torch.nn.Linear(6, 3)), UnitGates())  # fmt: skip
        result = fit(net, class_data, epochs=1, role_lr=role_lr, **KW)
        rates = result.history[0]["lr"]
        assert rates["gate"] == want and rates["weight"] == KW["lr"]
