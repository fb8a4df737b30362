"""ART's stop rule scores whatever ``fit(val=...)`` takes: a loader or a list of batches gives
the same validation accuracies, phases and stop epoch as the same data held as tensors.
(Under ``torchrun`` with a sharded validation loader: ``tests/inference/test_distributed.py``.)
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bayesprune import fit, sparsify
from bayesprune.data import Split, synthetic_classification
from bayesprune.priors.hypersparse_schedule import validation_split
from tests.helpers import mlp, small_art

DATA = synthetic_classification(192, 64, 0, input_shape=(8,), n_classes=3, seed=2)
KEYS = ("epoch", "phase", "alpha", "dense_val_accuracy", "pruned_val_accuracy", "stop_rule")


def art_history(val) -> list[dict]:
    torch.manual_seed(0)
    start = mlp(8, 16, 12, 3)
    prior = small_art(finetune=1, max_regularise=6)
    net = sparsify(copy.deepcopy(start), prior)
    result = fit(net, DATA, epochs=12, batch_size=32, lr=1e-2, val=val, progress=False)
    return [{k: h.get(k) for k in KEYS} for h in result.history]


@pytest.fixture(scope="module")
def with_tensors() -> list[dict]:
    history = art_history(DATA.val)
    stops = [h for h in history if h["stop_rule"]]
    assert len(stops) == 1 and history[-1]["phase"] == "finetune"
    assert any(h["pruned_val_accuracy"] is not None for h in history)
    return history


def val_as(kind: str):
    x, y = DATA.val.x, DATA.val.y
    if kind == "loader":
        return DataLoader(TensorDataset(x, y), batch_size=10)
    if kind == "shuffled loader":  # accuracy does not depend on the order
        return DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True)
    if kind == "batches":
        return [(x[i : i + 9], y[i : i + 9]) for i in range(0, x.shape[0], 9)]
    return (x, y)


@pytest.mark.parametrize("kind", ["loader", "shuffled loader", "batches", "pair"])
def test_the_stop_rule_scores_a_loader_like_the_tensors(with_tensors, kind):
    assert art_history(val_as(kind)) == with_tensors


def test_validation_split_takes_what_fit_takes():
    x, y = DATA.val.x, DATA.val.y
    loader = val_as("loader")
    assert validation_split(SimpleNamespace(val=loader, data=None)) is loader
    batches = val_as("batches")
    assert validation_split(SimpleNamespace(val=batches, data=None)) is batches
    got = validation_split(SimpleNamespace(val=(x, y), data=None))
    assert isinstance(got, Split) and got.x is x
    got = validation_split(SimpleNamespace(val=None, data=DATA))  # the Dataset's val split
    assert isinstance(got, Split) and torch.equal(got.y, DATA.val.y)


def test_no_usable_validation_data_names_the_validation_split():
    one_shot = iter(val_as("batches"))  # an iterator is used up after one epoch
    with pytest.raises(ValueError, match="validation split"):
        validation_split(SimpleNamespace(val=one_shot, data=None))
