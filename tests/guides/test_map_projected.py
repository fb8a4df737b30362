"""MAP with projected positive sites, and per-role learning rates in fit."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bayesprune import fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.guides import MAP
from bayesprune.priors import HALO


def _net(strength: float = 1e-2):
    layers = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    return sparsify(layers, HALO(strength, strength))


def test_projected_scales_are_the_parameters_themselves_and_stay_above_the_floor():
    net = _net()
    g = MAP(net, positive="projected", min_positive=1e-3)
    scale = g.sites[0]
    p = g.site_parameters(scale)[0]
    assert torch.equal(g.point()[scale.name], p.detach())
    with torch.no_grad():
        p.fill_(-5.0)
    g.project_()
    assert float(p.detach().min()) == pytest.approx(1e-3)


def test_exp_scales_are_not_touched_by_project():
    net = _net()
    g = MAP(net)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    g.project_()
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())


@pytest.mark.parametrize(
    ("kw", "match"), [({"positive": "log"}, "positive"), ({"min_positive": 0.0}, "min_positive")]
)
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        MAP(_net(), **kw)


def test_fit_with_projected_scales_keeps_them_positive_and_learns():
    data = synthetic_classification(n_train=256, n_val=64, input_shape=(16,), n_classes=3)
    net = sparsify(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), HALO(1e-4, 1e-4))
    g = MAP(net, positive="projected")
    r = fit(net, data, g, epochs=3, batch_size=32, lr=1e-2, progress=False)
    assert r.final["val_accuracy"] > 0.6
    assert all(
        float(v.min()) >= g.min_positive for n, v in g.point().items() if n.endswith("scale")
    )


def test_role_lr_gives_scales_their_own_learning_rate():
    data = synthetic_classification(n_train=64, n_val=32, input_shape=(4,), n_classes=3)
    seen = {}

    class Grab:
        def on_fit_start(self, state):
            seen.update({g["role"]: g["lr"] for g in state.optimizer.param_groups})

    net = _net()
    fit(
        net,
        data,
        MAP(net),
        epochs=1,
        batch_size=32,
        lr=1e-3,
        role_lr={"scale": 5e-2},
        callbacks=[Grab()],
        progress=False,
    )
    assert seen == {"scale": 5e-2, "weight": 1e-3, "deterministic": 1e-3}


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "x"])
def test_role_lr_validation(bad):
    net = _net()
    data = synthetic_classification(n_train=32, n_val=8, input_shape=(4,), n_classes=3)
    with pytest.raises(ValueError, match="role_lr"):
        fit(net, data, MAP(net), epochs=1, role_lr={"scale": bad}, progress=False)
