"""Fitted tiny models and their InferenceData for the report tests (one fit each, per package)."""

from __future__ import annotations

import pyro
import pytest
import torch
import torch.nn as nn

from bayesprune import fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.diagnostics import diagnose
from bayesprune.guides import MAP
from bayesprune.priors import HALO, UnitGates

DATA = dict(input_shape=(12,), n_classes=3, seed=0)


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def _fitted(prior, **fit_kw):
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    data = synthetic_classification(192, 64, 96, **DATA)
    net = sparsify(_mlp(), prior, example_input=data.train.x[:1])
    guide = MAP(net)
    result = fit(net, data, guide, epochs=3, batch_size=32, progress=False, log_every=2, **fit_kw)
    idata = diagnose(net, guide, data, num_samples=20, result=result, pruning_points=5)
    return net, result, idata


@pytest.fixture(scope="package")
def gates_run():
    """Unit gates, MAP guide, units removed during the fit: ``(net, result, idata)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fitted(
            UnitGates(gamma=0.5, cost="uniform"), remove_dead=True, lr=1e-2, role_lr={"gate": 0.1}
        )
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="package")
def halo_run():
    """Per-unit HALO, MAP guide: ``(net, result, idata)``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fitted(HALO(per="unit"), lr=1e-2)
    finally:
        torch.set_num_threads(n)
