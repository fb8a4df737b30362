"""A resume must match the checkpoint's fit settings: each mismatch is a CheckpointError
naming the field with both values; ``resume_override`` lets named fields change; older
checkpoints without settings resume unchecked."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bayesprune import fit, sparsify
from bayesprune.errors import CheckpointError, ConfigError
from bayesprune.guides import MAP
from bayesprune.inference import load_checkpoint
from bayesprune.inference.checkpoint import save_checkpoint
from bayesprune.inference.resume import CHECKPOINT_FORMAT, GUARDED
from bayesprune.priors import HALO

BASE = {"batch_size": 16, "lr": 1e-2, "progress": False}


def _fresh(nets):
    torch.manual_seed(0)
    net = sparsify(nets["mlp"](), HALO())
    return net, MAP(net)


def _fit(nets, data, **kw):
    net, g = _fresh(nets)
    return fit(net, data, g, **kw)


def _first(nets, data, tmp_path, **kw):
    """One epoch of a two-epoch fit, checkpointed in ``tmp_path``."""
    net, g = _fresh(nets)

    class StopAfterOne:
        def on_epoch_end(self, state):
            return True

    return fit(net, data, g, epochs=2, checkpoint=tmp_path, callbacks=[StopAfterOne()], **kw)


def _resume(nets, data, tmp_path, **kw):
    net, g = _fresh(nets)
    return fit(net, data, g, checkpoint=tmp_path, resume=True, **kw)


@pytest.mark.parametrize(
    ("field", "changed", "shown"),
    [
        ("batch_size", {"batch_size": 32}, "batch_size 16 there, 32 now"),
        ("seed", {"seed": 1}, "seed 0 there, 1 now"),
        ("lr", {"lr": 2e-2}, "lr 0.01 there, 0.02 now"),
        ("role_lr", {"role_lr": {"scale": 0.1}}, "role_lr {} there, {'scale': 0.1} now"),
        ("optimizer", {"optimizer": "adamw"}, "optimizer 'adam' there, 'adamw' now"),
        ("weight_decay", {"weight_decay": 0.1}, "weight_decay 0.0 there, 0.1 now"),
        ("schedule", {"schedule": "cosine"}, "schedule None there, {'name': 'cosine'"),
    ],
)
def test_each_changed_setting_is_named_with_both_values(
    nets, class_data, tmp_path, field, changed, shown
):
    _first(nets, class_data, tmp_path, **BASE)
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(CheckpointError, match=f"resume_override=\\('{field}',\\)") as e:
        _resume(nets, class_data, tmp_path, epochs=2, **{**BASE, **changed})
    assert shown in str(e.value) and str(tmp_path) in str(e.value)
    assert (tmp_path / "last.pt").read_bytes() == before  # nothing written
    # the named override lets it through, and the fit runs to its end
    result = _resume(nets, class_data, tmp_path, epochs=2, resume_override=(field,),
                     **{**BASE, **changed})  # fmt: skip
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert load_checkpoint(tmp_path)["format"] == CHECKPOINT_FORMAT
    # the checkpoint now holds this call's settings: the next resume with them needs no override
    _resume(nets, class_data, tmp_path, epochs=2, **{**BASE, **changed})


def test_another_training_set_size_is_named(nets, class_data, tmp_path):
    _first(nets, class_data, tmp_path, **BASE)
    with pytest.raises(CheckpointError, match="n_data 128 there, 96 now"):
        _resume(nets, class_data.first(96), tmp_path, epochs=2, **BASE)
    _resume(nets, class_data.first(96), tmp_path, epochs=2, resume_override=("n_data",), **BASE)


def test_another_number_of_processes_is_named(nets, class_data, tmp_path):
    _first(nets, class_data, tmp_path, **BASE)
    ck = load_checkpoint(tmp_path)
    ck["settings"] = json.dumps({**json.loads(ck["settings"]), "world": 2})
    save_checkpoint(ck, tmp_path)
    with pytest.raises(CheckpointError, match="world 2 there, 1 now"):
        _resume(nets, class_data, tmp_path, epochs=2, **BASE)


def test_several_changes_are_named_together(nets, class_data, tmp_path):
    _first(nets, class_data, tmp_path, **BASE)
    with pytest.raises(CheckpointError, match=r"resume_override=\('seed', 'lr'\)"):
        _resume(nets, class_data, tmp_path, epochs=2, **{**BASE, "lr": 0.5}, seed=4)
    with pytest.raises(CheckpointError, match=r"seed 0 there, 4 now\. "):
        _resume(nets, class_data, tmp_path, epochs=2, **{**BASE, "lr": 0.5}, seed=4,
                resume_override=("lr",))  # fmt: skip


def test_the_same_settings_resume_and_more_epochs_continue(nets, class_data, tmp_path):
    straight = _fit(nets, class_data, epochs=3, **BASE)
    _first(nets, class_data, tmp_path, **BASE)
    resumed = _resume(nets, class_data, tmp_path, epochs=3, **BASE)  # epochs is not guarded
    assert resumed.elbo == straight.elbo
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_an_overridden_lr_takes_effect(nets, class_data, tmp_path):
    _first(nets, class_data, tmp_path, **BASE)
    result = _resume(nets, class_data, tmp_path, epochs=2, resume_override=("lr", "role_lr"),
                     **{**BASE, "lr": 0.05}, role_lr={"scale": 0.2})  # fmt: skip
    assert result.history[0]["lr"]["weight"] == 0.01  # the first epoch, before the resume
    assert result.history[1]["lr"] == {"scale": 0.2, "weight": 0.05, "deterministic": 0.05}


def test_lengthening_a_cosine_fit_needs_the_schedule_override(nets, class_data, tmp_path):
    kw = {**BASE, "schedule": "cosine"}
    _fit(nets, class_data, epochs=2, checkpoint=tmp_path, **kw)
    with pytest.raises(CheckpointError, match="'steps': 16} there, .*'steps': 24} now"):
        _resume(nets, class_data, tmp_path, epochs=3, **kw)
    result = _resume(nets, class_data, tmp_path, epochs=3, resume_override=("schedule",), **kw)
    assert len(result.history) == 3
    assert result.history[-1]["lr"]["weight"] == pytest.approx(0.0, abs=1e-12)  # new end


def test_a_loaders_batch_size_is_guarded(nets, class_data, tmp_path):
    x, y = class_data.train.x, class_data.train.y

    def loader(b):
        return DataLoader(TensorDataset(x, y), batch_size=b, shuffle=True)

    _first(nets, loader(16), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="batch_size 16 there, 32 now"):
        _resume(nets, loader(32), tmp_path, epochs=2, progress=False)


def test_an_older_checkpoint_without_settings_resumes_unchecked(nets, class_data, tmp_path, caplog):
    _first(nets, class_data, tmp_path, **BASE)
    ck = load_checkpoint(tmp_path)
    del ck["settings"]
    ck["format"] = "bayesprune-fit-1"
    save_checkpoint(ck, tmp_path)
    with caplog.at_level(logging.WARNING, logger="bayesprune.inference.resume"):
        result = _resume(nets, class_data, tmp_path, epochs=2, **{**BASE, "seed": 5})
    assert "records no fit settings" in caplog.text
    assert len(result.history) == 2


@pytest.mark.parametrize(
    ("override", "resume", "match"),
    [
        ("lr", True, "must be a tuple of setting names"),
        (("lr", "epochs"), True, r"unknown setting\(s\) \['epochs'\]"),
        (("lr",), False, "only meaningful with resume=True"),
    ],
)
def test_bad_overrides_are_config_errors(nets, class_data, tmp_path, override, resume, match):
    net, g = _fresh(nets)
    with pytest.raises(ConfigError, match=match):
        fit(net, class_data, g, epochs=1, checkpoint=tmp_path, resume=resume,
            resume_override=override, **BASE)  # fmt: skip


def test_every_guarded_field_is_recorded(nets, class_data, tmp_path):
    _first(nets, class_data, tmp_path, **BASE)
    settings = json.loads(load_checkpoint(tmp_path)["settings"])
    assert tuple(settings) == GUARDED
    assert settings["n_data"] == 128 and settings["world"] == 1 and settings["schedule"] is None


@pytest.mark.parametrize("settings", ["{not json", "[1, 2]", 3])
def test_unreadable_settings_are_a_checkpoint_error(nets, class_data, tmp_path, settings):
    _first(nets, class_data, tmp_path, **BASE)
    ck = load_checkpoint(tmp_path)
    ck["settings"] = settings
    save_checkpoint(ck, tmp_path)
    with pytest.raises(CheckpointError, match="fit settings are not readable"):
        _resume(nets, class_data, tmp_path, epochs=2, **BASE)
