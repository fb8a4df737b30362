"""``fit(..., remove_dead=True)``: dead units (gate θ == 0) leave the network at the end of
every epoch, the fit keeps learning, and a killed fit resumes exactly across removals."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn as nn
from conftest import Killed, kill_at_step  # noqa: I001

from bayesprune import collapse, extract, fit, sparsify
from bayesprune.cli.spec import FIT_DEFAULTS, Spec, SpecError
from bayesprune.guides import MAP, MeanField
from bayesprune.guides.base import key
from bayesprune.inference import CheckpointError, load_checkpoint
from bayesprune.priors import HALO, UnitGates
from bayesprune.pruning.live import remove_units, removed_units
from tests.helpers import assert_same_fit, go

fit_module = importlib.import_module("bayesprune.inference.fit")

# 128 examples: 8 steps per epoch; a fast learning rate for the gates so units die early
KW = {"batch_size": 16, "lr": 1e-2, "role_lr": {"gate": 0.1}, "progress": False}
HIDDEN = ("0", "2")


def make(seed: int = 0, guide: str = "map", gamma: float = 0.3):
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    net = sparsify(module, UnitGates(gamma=gamma))
    return net, (MAP(net) if guide == "map" else MeanField(net, init_scale=0.05))


def widths(net) -> dict[str, int]:
    return {n: net.module.get_submodule(n).out_features for n in HIDDEN}


def test_dead_units_are_removed_and_the_fit_keeps_learning(class_data):
    net, guide = make(gamma=0.5)
    result = fit(net, class_data, guide, epochs=4, remove_dead=True, **KW)
    w = widths(net)
    assert all(v < 16 for v in w.values())  # the layers shrank
    assert net.module[2].in_features == w["0"] and net.module[4].in_features == w["2"]
    assert result.final["val_accuracy"] > 0.8  # chance is 1/3
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    for h in result.history:
        assert h["seconds"] > 0 and set(h["units"]) == set(h["removed"]) == set(HIDDEN)
    assert result.final["units"] == w  # units alive per layer = what is left
    assert {n: sum(h["removed"][n] for h in result.history) for n in HIDDEN} == {
        n: 16 - v for n, v in w.items()
    }
    # the record of what is left, in original indexing
    assert {n: len(u) for n, u in result.removed.items()} == w
    assert all(torch.equal(u, removed_units(net)[n]) for n, u in result.removed.items())
    for s in net.gates:  # every unit left has an open gate, and the guide matches the net
        assert bool((guide.gate_probs[key(s.name)] > 0).all())
    assert [(s.name, s.shape) for s in guide.sites] == [(s.name, s.shape) for s in net.sites]
    # "kept" stays a fraction of the network as built: removed units count as not kept
    theta = [guide.gate_probs[key(s.name)].detach() for s in net.gates]
    assert result.final["kept"] == pytest.approx(sum(int((t > 0.5).sum()) for t in theta) / 32)
    # and the smaller network collapses and extracts as any other
    small = extract(net, collapse(net, guide)).eval()
    x = class_data.val.x
    with torch.no_grad():
        torch.testing.assert_close(small(x), net.predict(guide.point(), x))


def test_without_unit_gates_removal_is_a_no_op(class_data):
    runs = []
    for remove_dead in (False, True):
        torch.manual_seed(0)
        net = sparsify(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), HALO())
        runs.append(fit(net, class_data, epochs=2, remove_dead=remove_dead, **KW))
    assert_same_fit(*runs)
    for bad in ("yes", 0, -3, 2.5):
        with pytest.raises(ValueError, match="remove_dead must be True, False or a number"):
            fit(runs[0].net, class_data, epochs=1, remove_dead=bad, **KW)


@pytest.mark.parametrize("guide", ["map", "mean_field"])
@pytest.mark.parametrize(("kill", "every"), [(17, 8), (22, 3)])  # epoch 3: at its start, mid
@pytest.mark.parametrize("remove_dead", [True, 5])
def test_a_fit_killed_after_a_removal_resumes_exactly(
    class_data, tmp_path, monkeypatch, guide, kill, every, remove_dead
):
    kw = {**KW, "epochs": 4, "remove_dead": remove_dead, "checkpoint_every": every}
    straight = go(make(0, guide), class_data, checkpoint=tmp_path / "a", **kw)
    assert sum(sum(h["removed"].values()) for h in straight.history[2:]) > 0  # removals later on

    kill_at_step(monkeypatch, kill)
    with pytest.raises(Killed):
        go(make(0, guide), class_data, checkpoint=tmp_path / "b", **kw)
    monkeypatch.undo()
    ck = load_checkpoint(tmp_path / "b")
    assert ck["global_step"] == (kill - 1) // every * every and ck["removed"]  # after a removal

    net, g = make(1, guide)  # fresh objects as built from the spec, other initial weights
    torch.manual_seed(123)
    resumed = fit(net, class_data, g, checkpoint=tmp_path / "b", resume=True, **kw)
    assert_same_fit(straight, resumed)
    assert widths(net) == widths(straight.net)


def test_a_fit_continued_on_the_same_shrunk_objects_resumes_exactly(class_data, tmp_path):
    kw = {**KW, "remove_dead": True}
    straight = go(make(), class_data, epochs=4, checkpoint=tmp_path / "a", **kw)
    net, g = make()
    first = fit(net, class_data, g, epochs=2, checkpoint=tmp_path / "b", **kw)
    assert first.removed  # the net is already smaller: the checkpoint's sites are as built
    again = fit(net, class_data, g, epochs=4, checkpoint=tmp_path / "b", resume=True, **kw)
    assert_same_fit(straight, again)
    ck = load_checkpoint(tmp_path / "b")
    assert {n: u.tolist() for n, u in ck["removed"].items()} == {
        n: u.tolist() for n, u in straight.removed.items()
    }


def test_resuming_into_another_model_still_fails(class_data, tmp_path):
    go(make(), class_data, epochs=2, checkpoint=tmp_path, remove_dead=True, **KW)
    net, g = make(gamma=0.4)
    with pytest.raises(CheckpointError, match="different model"):
        fit(net, class_data, g, epochs=3, checkpoint=tmp_path, resume=True, **KW)
    net, g = make()  # the right model, but it lost other units already
    remove_units(net, g, {"0": [1, 2, 3]}, example_input=class_data.train.x[:1])
    with pytest.raises(CheckpointError, match="already removed"):
        fit(net, class_data, g, epochs=3, checkpoint=tmp_path, resume=True, **KW)


def test_spec_fit_remove_dead():
    assert FIT_DEFAULTS["remove_dead"] is False
    spec = Spec.from_dict(
        {"network": {"name": "lenet300"}, "prior": {"name": "gates"}, "fit": {"remove_dead": True}}
    )
    assert spec.fit_kwargs()["remove_dead"] is True
    every = {"network": {"name": "lenet300"}, "prior": {"name": "gates"}, "fit": {"remove_dead": 5}}
    assert Spec.from_dict(every).fit_kwargs()["remove_dead"] == 5
    for bad in (0, "yes"):
        with pytest.raises(SpecError, match=r"\[fit\] remove_dead must be true, false or a"):
            Spec.from_dict(
                {
                    "network": {"name": "lenet300"},
                    "prior": {"name": "gates"},
                    "fit": {"remove_dead": bad},
                }
            )


def test_removal_every_few_steps_cuts_units_before_the_epoch_ends(class_data):
    seen = []

    class Widths:
        def on_step_end(self, state):
            seen.append((state.global_step + 1, sum(widths(state.net).values())))

    runs, cuts = {}, {}
    for remove_dead in (True, 2):
        seen.clear()
        net, guide = make(gamma=0.5)
        runs[remove_dead] = fit(
            net, class_data, guide, epochs=3, remove_dead=remove_dead, callbacks=[Widths()], **KW
        )
        cuts[remove_dead] = next(step for step, w in seen if w < 32)
    assert cuts[True] % 8 == 1  # seen after an epoch's last step, so at the next one
    assert cuts[2] < cuts[True]  # removed before that epoch ended
    # the epoch records sum every removal of the epoch
    every = runs[2].history
    assert sum(sum(h["removed"].values()) for h in every) == 32 - sum(widths(runs[2].net).values())
