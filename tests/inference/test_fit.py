"""The SVI loop: learning, exact resume, atomic checkpoints, NaN guard, arguments, callbacks,
logging cadence and host synchronisation."""

from __future__ import annotations

import importlib
import math
import os

import pytest
import torch
from conftest import Killed, kill_at_step  # noqa: I001

from bayesprune import BayesianNet, fit, sparsify
from bayesprune.data import Dataset, Split, synthetic_classification
from bayesprune.guides import MAP, MeanField
from bayesprune.inference import CheckpointError, NonFiniteLossError, load_checkpoint
from bayesprune.inference.resume import CHECKPOINT_FORMAT
from bayesprune.nn import Gaussian
from bayesprune.priors import HALO
from tests.helpers import assert_same_fit, go, records

fit_module = importlib.import_module("bayesprune.inference.fit")

KW = {"batch_size": 16, "lr": 1e-2, "progress": False}  # 128 examples: 8 steps per epoch


@pytest.fixture
def build(nets):
    """``build(seed, guide="mean_field", per="weight")`` -> (net, guide), fresh objects."""

    def make(seed: int = 0, guide: str = "mean_field", per: str = "weight"):
        torch.manual_seed(seed)
        net = sparsify(nets["mlp"](), HALO(xi=1e-3, psi=1e-3, per=per))
        g = MeanField(net, init_scale=0.05) if guide == "mean_field" else MAP(net)
        return net, g

    return make


def nan_likelihood_after(monkeypatch, net: BayesianNet, calls_ok: int) -> None:
    """The likelihood returns NaN from its ``calls_ok + 1``-th call on."""
    original = net.likelihood.log_prob
    calls = [0]

    def log_prob(out, y):
        calls[0] += 1
        value = original(out, y)
        return value * math.nan if calls[0] > calls_ok else value

    monkeypatch.setattr(net.likelihood, "log_prob", log_prob)


# --- (a) it learns ---------------------------------------------------------------------------
@pytest.mark.parametrize("guide", ["map", "mean_field"])
def test_fit_learns_with_fused_and_trace_losses_alike(build, class_data, guide):
    results = {}
    for loss in ("fused", "trace"):
        net, g = build(0, guide)
        results[loss] = fit(net, class_data, g, epochs=3, loss=loss, **KW)
    for r in results.values():
        assert len(r.history) == 3
        assert r.final["val_accuracy"] > 0.8  # chance is 1/3
        assert r.history[-1]["loss"] < r.history[0]["loss"]
        assert 0 < r.final["kept"] <= 1
        assert r.final["epoch"] == 3 and r.epoch_seconds[0] > 0
    # the same estimator: the two fits only differ by float rounding
    for a, b in zip(records(results["fused"]), records(results["trace"]), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-3), k


def test_fit_trains_the_deterministic_parameters_in_place(build, class_data):
    net, guide = build(0, "map")
    bias_before = net.module[0].bias.detach().clone()
    weight_before = net.module[0].weight.detach().clone()
    result = fit(net, class_data, guide, epochs=1, **KW)
    assert result.net is net and result.guide is guide
    assert not torch.equal(net.module[0].bias, bias_before)
    # replaced by a site: trained in the guide, its point estimate written back at the end
    assert not torch.equal(guide.point()["0.weight"], weight_before)
    assert torch.equal(net.module[0].weight, guide.point()["0.weight"])


def test_after_fit_the_module_is_the_fitted_network(build, class_data):
    from bayesprune.pruning import collapse, extract

    net, guide = build(0, "mean_field")
    fit(net, class_data, guide, epochs=1, **KW)
    x = class_data.val.x
    collapsed = extract(net, collapse(net, guide, keep=1.0))
    net.module.eval()
    torch.testing.assert_close(net.module(x), collapsed(x))
    torch.testing.assert_close(net.module(x), net.predict(guide.point(), x))


def test_regression_fit_reports_rmse():
    data = Dataset(
        train=Split(torch.randn(64, 3), torch.randn(64)),
        val=Split(torch.randn(16, 3), torch.randn(16)),
    )
    net = sparsify(torch.nn.Linear(3, 1), HALO(), likelihood=Gaussian(1.0))
    result = fit(net, data, epochs=1, **KW)
    assert {"val_rmse", "val_nll"} <= set(result.final)


def test_tensor_pair_data_and_zero_epochs(build, class_data):
    net, guide = build(0)
    result = fit(net, (class_data.train.x, class_data.train.y), guide, epochs=1, **KW)
    assert len(result.history) == 1 and "val_accuracy" not in result.final
    net, guide = build(0)
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    result = fit(net, class_data, guide, epochs=0, **KW)
    assert result.history == [] and result.final == {} and result.elbo == []
    assert all(torch.equal(v, before[k]) for k, v in guide.state_dict().items())


def test_same_seed_same_fit_other_seed_other_fit(build, class_data):
    r1 = go(build(0), class_data, epochs=1, seed=3, **KW)
    r2 = go(build(0), class_data, epochs=1, seed=3, **KW)
    r3 = go(build(0), class_data, epochs=1, seed=4, **KW)
    assert_same_fit(r1, r2)
    assert r1.elbo != r3.elbo


# --- (b) exact resume ------------------------------------------------------------------------
@pytest.mark.parametrize("guide", ["map", "mean_field"])
def test_resume_after_an_epoch_is_exact(build, class_data, tmp_path, guide):
    straight = go(build(0, guide), class_data, epochs=2, checkpoint=tmp_path / "a", **KW)

    go(build(0, guide), class_data, epochs=1, checkpoint=tmp_path / "b", **KW)
    net, g = build(1, guide)  # new objects, different initial weights
    torch.manual_seed(123)  # and a different global random state
    resumed = fit(net, class_data, g, epochs=2, checkpoint=tmp_path / "b", resume=True, **KW)
    assert_same_fit(straight, resumed)
    assert resumed.guide is g and resumed.checkpoint == tmp_path / "b" / "last.pt"


@pytest.mark.parametrize(
    ("kill", "every"),
    [(5, 3), (12, 3), (7, 4), (9, 2), (11, 2)],  # (9, 2): killed right after an epoch's end
)
def test_resume_after_a_kill_mid_epoch_is_exact(
    build, class_data, tmp_path, monkeypatch, kill, every
):
    kw = {**KW, "checkpoint_every": every}
    straight = go(build(0), class_data, epochs=2, checkpoint=tmp_path / "a", **kw)

    kill_at_step(monkeypatch, kill)
    with pytest.raises(Killed):
        go(build(0), class_data, epochs=2, checkpoint=tmp_path / "b", **kw)
    monkeypatch.undo()
    last = load_checkpoint(tmp_path / "b")
    done = (kill - 1) // every * every  # the last multiple of `every` before the kill
    assert last["global_step"] == done
    assert last["step_in_epoch"] == done % 8

    net, g = build(1)
    resumed = fit(net, class_data, g, epochs=2, checkpoint=tmp_path / "b", resume=True, **kw)
    assert_same_fit(straight, resumed)


def test_resume_with_a_schedule_after_an_early_stop(build, class_data, tmp_path):
    kw = {**KW, "schedule": "cosine"}
    straight = go(build(0), class_data, epochs=3, checkpoint=tmp_path / "a", **kw)

    class StopAfterOne:
        def on_epoch_end(self, state):
            return state.epoch == 1

    first = go(
        build(0), class_data, epochs=3, checkpoint=tmp_path / "b", callbacks=[StopAfterOne()], **kw
    )
    assert first.stopped_early and len(first.history) == 1
    net, g = build(1)
    resumed = fit(net, class_data, g, epochs=3, checkpoint=tmp_path / "b", resume=True, **kw)
    assert_same_fit(straight, resumed)
    assert not resumed.stopped_early


def test_resume_of_a_finished_fit_does_nothing(build, class_data, tmp_path):
    done = go(build(0), class_data, epochs=2, checkpoint=tmp_path, **KW)
    net, g = build(1)
    again = fit(net, class_data, g, epochs=2, checkpoint=tmp_path, resume=True, **KW)
    assert_same_fit(done, again)


# --- (c) checkpoint files ----------------------------------------------------------------------
def test_checkpoints_are_atomic_and_complete(build, class_data, tmp_path):
    result = go(build(0), class_data, epochs=2, checkpoint=tmp_path, checkpoint_every=3, **KW)
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary files left behind
    assert result.checkpoint == tmp_path / "last.pt"
    ck = load_checkpoint(result.checkpoint)
    assert ck["format"] == CHECKPOINT_FORMAT
    assert (ck["epoch"], ck["step_in_epoch"], ck["global_step"]) == (2, 0, 16)
    assert ck["elbo"] == result.elbo


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_raises_naming_the_file_and_keeps_it(
    build, class_data, tmp_path, damage
):
    go(build(0), class_data, epochs=1, checkpoint=tmp_path, **KW)
    path = tmp_path / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncate" else b"\x00" * 100)
    damaged = path.read_bytes()
    net, g = build(1)
    with pytest.raises(CheckpointError, match=str(path)):
        fit(net, class_data, g, epochs=2, checkpoint=tmp_path, resume=True, **KW)
    assert path.read_bytes() == damaged
    assert os.listdir(tmp_path) == ["last.pt"]


def test_resume_without_a_checkpoint_file(build, class_data, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        go(build(0), class_data, epochs=1, checkpoint=tmp_path, resume=True, **KW)


@pytest.mark.parametrize(
    "other",
    [
        {"guide": "map"},  # another guide family
        {"per": "unit"},  # another prior configuration: other sites
    ],
)
def test_checkpoint_of_another_model_is_refused(build, class_data, tmp_path, other):
    go(build(0), class_data, epochs=1, checkpoint=tmp_path, **KW)
    before = (tmp_path / "last.pt").read_bytes()
    net, g = build(0, **other)
    with pytest.raises(CheckpointError, match="different model/prior/guide"):
        fit(net, class_data, g, epochs=2, checkpoint=tmp_path, resume=True, **KW)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_checkpoint_of_another_network_is_refused(nets, class_data, tmp_path):
    net = sparsify(nets["mlp"](), HALO(), layers="2")
    fit(net, class_data, epochs=1, checkpoint=tmp_path, **KW)
    wider = sparsify(
        torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)),
        HALO(),
        layers="2",
    )
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        fit(wider, class_data, epochs=2, checkpoint=tmp_path, resume=True, **KW)


# --- (d) NaN guard -----------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_inputs_are_refused_naming_the_split(build, split, bad):
    data = synthetic_classification(32, 16, 0, input_shape=(8,), n_classes=3)
    s = getattr(data, split)
    x = s.x.clone()
    x[3, 2] = bad
    data = Dataset(**{**data.__dict__, split: Split(x, s.y)})
    with pytest.raises(ValueError, match=f"the {split} split has NaN/Inf inputs in 1 examples"):
        go(build(0), data, epochs=1, **KW)


def test_non_finite_regression_targets_are_refused():
    y = torch.randn(16)
    y[0] = math.nan
    net = sparsify(torch.nn.Linear(3, 1), HALO(), likelihood="gaussian")
    with pytest.raises(ValueError, match="the train split has NaN/Inf targets"):
        fit(net, (torch.randn(16, 3), y), epochs=1, **KW)


def test_nan_mid_fit_stops_and_leaves_the_last_checkpoint_intact(
    build, class_data, tmp_path, monkeypatch
):
    path = tmp_path / "last.pt"
    seen = {}

    class Snapshot:
        def on_epoch_start(self, state):
            if state.epoch == 1:
                seen["bytes"] = path.read_bytes()

    net, g = build(0)
    nan_likelihood_after(monkeypatch, net, calls_ok=8 + 3)  # NaN from step 4 of epoch 2
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step \d") as err:
        fit(
            net,
            class_data,
            g,
            epochs=3,
            checkpoint=tmp_path,
            callbacks=[Snapshot()],
            log_every=2,
            **KW,
        )
    assert str(path) in str(err.value) and "intact" in str(err.value)
    assert path.read_bytes() == seen["bytes"]
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]

    # nothing was lost: resuming from it gives the fit that never saw a NaN
    straight = go(build(0), class_data, epochs=2, checkpoint=tmp_path / "ok", log_every=2, **KW)
    resumed = go(
        build(1), class_data, epochs=2, checkpoint=tmp_path, resume=True, log_every=2, **KW
    )
    assert_same_fit(straight, resumed)


def test_nan_is_caught_before_a_mid_epoch_checkpoint_is_written(
    build, class_data, tmp_path, monkeypatch
):
    net, g = build(0)
    nan_likelihood_after(monkeypatch, net, calls_ok=4)  # steps 1-4 fine, NaN from step 5
    with pytest.raises(NonFiniteLossError):
        fit(net, class_data, g, epochs=1, checkpoint=tmp_path, checkpoint_every=2, **KW)
    ck = load_checkpoint(tmp_path)
    assert ck["global_step"] == 4
    assert all(math.isfinite(v) for v in ck["elbo"])
    assert all(bool(torch.isfinite(v).all()) for v in ck["guide"].values())


def test_nan_at_the_first_step_writes_nothing(build, class_data, tmp_path, monkeypatch):
    net, g = build(0)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    nan_likelihood_after(monkeypatch, net, calls_ok=0)
    with pytest.raises(NonFiniteLossError, match="at the first step"):
        fit(net, class_data, g, epochs=1, checkpoint=tmp_path, **KW)
    assert not (tmp_path / "last.pt").exists()
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())  # no step taken


def test_a_huge_learning_rate_is_caught(nets, class_data):
    net = sparsify(nets["mlp"](), HALO(xi=1e-3, psi=1e-3))
    with pytest.raises(NonFiniteLossError, match="Lower the learning rate"):
        fit(
            net,
            class_data,
            MeanField(net, init_scale=1.0),
            epochs=3,
            batch_size=16,
            lr=1e30,
            progress=False,
            log_every=1,
        )


# --- (e) argument validation -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"epochs": -1}, ValueError, "epochs must be an integer >= 0, got -1"),
        ({"epochs": 1.5}, ValueError, "epochs must be"),
        ({"epochs": True}, ValueError, "epochs must be"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.0}, ValueError, "batch_size must be"),
        ({"lr": 0}, ValueError, "lr must be a finite number > 0, got 0"),
        ({"lr": -1e-3}, ValueError, "lr must be"),
        ({"lr": math.nan}, ValueError, "lr must be"),
        ({"lr": "1e-3"}, ValueError, "lr must be"),
        ({"log_every": 0}, ValueError, "log_every must be a positive integer"),
        ({"checkpoint_every": 0}, ValueError, "checkpoint_every must be a positive integer"),
        ({"resume": True}, ValueError, "resume=True needs checkpoint="),
        ({"optimizer": "lbfgs"}, ValueError, "unknown optimizer 'lbfgs'"),
        ({"schedule": "step"}, ValueError, "unknown schedule 'step'"),
        ({"loss": "jit"}, ValueError, "unknown estimator 'jit'"),
    ],
)
def test_argument_validation(build, class_data, kwargs, err, match):
    args = {"epochs": 1, **KW, **kwargs}
    with pytest.raises(err, match=match):
        go(build(0), class_data, **args)


@pytest.mark.parametrize("bad", [torch.nn.Linear(8, 3), None, "net"])
def test_net_must_be_a_bayesian_net(class_data, bad):
    with pytest.raises(TypeError, match="net must be a BayesianNet"):
        fit(bad, class_data, epochs=1)


@pytest.mark.parametrize("bad", [torch.randn(4, 8), [torch.randn(4, 8)], "data"])
def test_data_must_be_a_dataset_or_a_pair(build, bad):
    with pytest.raises(TypeError, match="data must be a bayesprune Dataset"):
        go(build(0), bad, epochs=1)


def test_labels_beyond_the_outputs_are_refused(build):
    x, y = torch.randn(8, 8), torch.arange(8)  # labels up to 7, the net has 3 outputs
    with pytest.raises(ValueError, match="target label 7 but the network has only 3 outputs"):
        go(build(0), (x, y), epochs=1)


# --- (f) callbacks ---------------------------------------------------------------------------
def test_callbacks_see_the_state_and_can_stop(build, class_data, tmp_path):
    calls = []

    class Recorder:
        def on_fit_start(self, state):
            calls.append(("fit_start", state.epoch, state.global_step))

        def on_epoch_start(self, state):
            calls.append(("epoch_start", state.epoch, state.global_step))

        def on_epoch_end(self, state):
            calls.append(("epoch_end", state.epoch, state.global_step))
            state.history[-1]["note"] = state.epoch
            return state.epoch == 2  # stop after the second epoch

    class Silent:  # a callback with no hooks at all is fine
        pass

    result = go(
        build(0), class_data, epochs=5, checkpoint=tmp_path, callbacks=[Silent(), Recorder()], **KW
    )
    assert calls == [
        ("fit_start", 0, 0),
        ("epoch_start", 0, 0),
        ("epoch_end", 1, 8),
        ("epoch_start", 1, 8),
        ("epoch_end", 2, 16),
    ]
    assert result.stopped_early
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert [h["note"] for h in result.history] == [1, 2]
    assert load_checkpoint(tmp_path)["epoch"] == 2  # the checkpoint is still written


# --- (g) logging cadence ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("log_every", "steps"),
    [
        (3, [3, 6, 8, 11, 14, 16]),  # windows restart at each epoch
        (1, list(range(1, 17))),
        (8, [8, 16]),
        (100, [8, 16]),
    ],
)
def test_log_every_sets_the_elbo_trace(build, class_data, log_every, steps):
    result = go(build(0), class_data, epochs=2, log_every=log_every, **KW)
    assert result.elbo_steps == steps
    assert len(result.elbo) == len(steps)
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.elbo)
    # the epoch loss is the step-weighted mean of the window means
    for epoch, record in enumerate(result.history):
        lo, hi = 8 * epoch, 8 * (epoch + 1)
        prev = lo
        total = 0.0
        for step, value in zip(result.elbo_steps, result.elbo, strict=True):
            if lo < step <= hi:
                total += value * (step - prev)
                prev = step
        assert record["loss"] == pytest.approx(total / 8, rel=1e-5)


def test_checkpoint_every_also_closes_a_window(build, class_data, tmp_path):
    result = go(
        build(0),
        class_data,
        epochs=1,
        log_every=100,
        checkpoint=tmp_path,
        checkpoint_every=3,
        **KW,
    )
    assert result.elbo_steps == [3, 6, 8]


# --- (h) device --------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_explicit_cpu_device(build, class_data, device):
    net, g = build(0)
    result = fit(net, class_data, g, epochs=1, device=device, **KW)
    assert net.device == torch.device("cpu")
    assert all(p.device == torch.device("cpu") for p in g.parameters())
    assert result.final["val_accuracy"] > 0


# --- (i) no host sync per step -------------------------------------------------------------------
HOST_SYNCS = {
    torch.Tensor.__float__,
    torch.Tensor.__bool__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.numpy,
    torch.Tensor.__format__,
}


class SyncCounting(torch.Tensor):
    """A loss tensor that counts every conversion to a Python number (a host sync on a
    GPU); tensors computed from it (sums, detached copies) are counted too."""

    syncs: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in HOST_SYNCS:
            cls.syncs.append(func.__name__)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_the_counter_sees_a_sync():
    SyncCounting.syncs = []
    t = torch.ones(()).as_subclass(SyncCounting)
    float((t + 1).detach())
    t.item()
    assert SyncCounting.syncs == ["__float__", "item"]


@pytest.mark.parametrize("loss", ["fused", "trace"])
def test_the_loop_syncs_once_per_window_not_once_per_step(build, monkeypatch, loss):
    data = synthetic_classification(320, 0, 0, input_shape=(8,), n_classes=3)  # 20 steps of 16
    original = fit_module.loss_from_name

    def counting(name):
        estimator = original(name)
        return lambda *a, **k: estimator(*a, **k).as_subclass(SyncCounting)

    monkeypatch.setattr(fit_module, "loss_from_name", counting)
    SyncCounting.syncs = []
    result = go(build(0), data, epochs=1, log_every=10, validate=False, loss=loss, **KW)
    assert result.elbo_steps == [10, 20]
    # one sync per log window (2), one for the epoch mean and one check of the very first
    # step: 4 for 20 steps, where a sync per step would give 20 or more
    assert len(SyncCounting.syncs) <= 4, SyncCounting.syncs
    assert SyncCounting.syncs.count("__float__") >= 2  # the counter did see the windows


def test_step_callbacks_and_the_priors_own_callbacks_run(build, class_data, monkeypatch):
    calls = {"step": 0, "prior": 0}

    class Step:
        def on_step_end(self, state):
            x, y, n_data = state.batch
            assert x.shape[0] == y.shape[0] == 16 and n_data == 128
            assert state.loss_fn is not None
            calls["step"] += 1

    class FromPrior:
        def on_epoch_end(self, state):
            calls["prior"] += 1

    net, g = build(0)
    monkeypatch.setattr(net.prior, "fit_callbacks", lambda: [FromPrior()])
    fit(net, class_data, g, epochs=2, callbacks=[Step()], **KW)
    assert calls == {"step": 16, "prior": 2}


def test_nothing_to_train_is_named(class_data, nets):
    from bayesprune.priors import Dense

    module = nets["mlp"]().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        fit(sparsify(module, Dense()), class_data, epochs=1, **KW)
