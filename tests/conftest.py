"""Shared fixtures: every test starts from the same seeds and an empty Pyro param store,
and gets tiny networks and data sets (CPU, a few hundred examples at most)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyro
import pytest
import torch
import torch.nn as nn

from bayesprune.data import Dataset, synthetic_classification
from tests.helpers import mlp  # also imported from here: tests.conftest.mlp

# One torch thread per test process: under pytest-xdist every worker would otherwise
# start as many threads as there are cores, and tiny ops stall on oversubscription.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    """Same random state for every test; Pyro's global state reset."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    validating = pyro.infer.util.is_validation_enabled()
    yield
    pyro.enable_validation(validating)


class ConvNet(nn.Module):
    """A small conv net with BatchNorm, on ``(1, 6, 6)`` inputs."""

    def __init__(self, channels: int = 3, out: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels * 4 * 4, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


NETS: dict[str, Callable[[], nn.Module]] = {"mlp": mlp, "conv": ConvNet}
INPUTS: dict[str, tuple[int, ...]] = {"mlp": (8,), "conv": (1, 6, 6)}


@pytest.fixture
def nets() -> dict[str, Callable[[], nn.Module]]:
    """Tiny network factories by kind: ``nets["mlp"]()``, ``nets["conv"]()``."""
    return NETS


@pytest.fixture
def inputs() -> Callable[[str, int], torch.Tensor]:
    """``inputs(kind, n)``: a random batch of ``n`` inputs for ``nets[kind]``."""
    return lambda kind, n: torch.randn(n, *INPUTS[kind])


@pytest.fixture(params=["weight", "unit"])
def net(request, nets):
    """The conv net under a HALO prior (initial scale 0.3), per weight and per unit, on
    every layer (the output layer too, which per-unit HALO leaves out by default)."""
    from bayesprune import sparsify
    from bayesprune.priors import HALO

    torch.manual_seed(1)
    prior = HALO(per=request.param, init_scale=0.3)
    return sparsify(nets["conv"](), prior, layers=(nn.Conv2d, nn.Linear))


@pytest.fixture(scope="session")
def class_data() -> Dataset:
    """3 classes in 8 dimensions: 128 train (8 batches of 16), 64 val."""
    return synthetic_classification(128, 64, 0, input_shape=(8,), n_classes=3, seed=0)


class Killed(Exception):
    """Stands for the process being killed."""


def kill_at_step(monkeypatch, step: int) -> None:
    """Make the loss estimator raise on its ``step``-th call (1-based) of the next fit."""
    import importlib

    fit_module = importlib.import_module("bayesprune.inference.fit")  # the module, not fit()

    original = fit_module.loss_from_name

    def patched(name):
        estimator = original(name)
        calls = [0]

        def loss(*args, **kwargs):
            calls[0] += 1
            if calls[0] == step:
                raise Killed
            return estimator(*args, **kwargs)

        return loss

    monkeypatch.setattr(fit_module, "loss_from_name", patched)
