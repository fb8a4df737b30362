import math
from collections import OrderedDict

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn as nn

import bayesprune as bp
from bayesprune.data import Dataset, synthetic_classification
from bayesprune.diagnostics._arviz import az
from bayesprune.diagnostics.inference_data import diagnose
from bayesprune.diagnostics.log_density import draw, log_guide, log_prior
from bayesprune.guides import MAP, MeanField
from bayesprune.inference.evaluate import evaluate
from bayesprune.priors import HALO, UnitGates
from bayesprune.pruning.inclusion import inclusion_probs
from bayesprune.pruning.live import removed_units

matplotlib.use("Agg")


@pytest.fixture
def data() -> Dataset:
    return synthetic_classification(256, 64, 64, input_shape=(8,), n_classes=3, seed=0)


def named_mlp(first: str = "hidden", last: str = "out") -> nn.Sequential:
    return nn.Sequential(
        OrderedDict([(first, nn.Linear(8, 16)), ("act", nn.ReLU()), (last, nn.Linear(16, 3))])
    )


@pytest.fixture
def gated(data):
    """A gated MLP fitted with live removal: some hidden units are cut out during the fit."""
    net = bp.sparsify(named_mlp(), UnitGates(gamma=0.3))
    result = bp.fit(
        net, data, MAP(net), epochs=4, batch_size=32, role_lr={"gate": 0.1},
        progress=False, remove_dead=True,
    )  # fmt: skip
    return net, result


@pytest.fixture
def mean_field(data):
    net = bp.sparsify(named_mlp("features", "head"), HALO(xi=1e-3, psi=1e-3))
    result = bp.fit(
        net, data, MeanField(net, init_scale=0.05), epochs=3, batch_size=32, progress=False
    )
    return net, result


@pytest.fixture
def halo_map(data):
    net = bp.sparsify(named_mlp(), HALO(xi=1e-3, psi=1e-3))
    return net, bp.fit(net, data, MAP(net), epochs=2, batch_size=32, progress=False)


def test_dims_and_coords_are_named_after_the_users_modules(gated, data):
    net, result = gated
    idata = diagnose(net, result.guide, data, num_samples=8, result=result)
    assert set(idata.posterior.data_vars) == {
        "hidden.gate", "hidden.gate_prob", "hidden.weight_norm"
    }  # fmt: skip
    for group in ("posterior", "posterior_predictive", "log_likelihood"):
        for var in idata[group].data_vars.values():
            assert var.dims[:2] == ("chain", "draw") and var.shape[:2] == (1, 8)
    assert idata.posterior["hidden.gate"].dims == ("chain", "draw", "hidden_unit")
    assert idata.inclusion["hidden.p_keep"].dims == ("hidden_unit",)
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "obs_id")
    assert idata.observed_data["obs"].values.tolist() == data.test.y.tolist()


def test_unit_coords_are_original_indices_after_live_removal(gated, data):
    net, result = gated
    kept = removed_units(net)["hidden"]
    assert 0 < kept.numel() < 16  # the fit did remove units
    idata = diagnose(net, result.guide, data, num_samples=4, weights=True)
    assert idata.posterior["hidden_unit"].values.tolist() == kept.tolist()
    assert idata.inclusion["hidden_unit"].values.tolist() == kept.tolist()
    weight = idata.posterior["hidden.weight"]
    assert weight.dims == ("chain", "draw", "hidden_out", "hidden_in")
    assert weight["hidden_out"].values.tolist() == kept.tolist()
    point = result.guide.point()["hidden.weight"]
    np.testing.assert_allclose(weight.values[0, 0], point.numpy())  # MAP: the point itself


def test_gate_draws_are_bernoulli_theta(gated, data):
    net, result = gated
    s = 200
    idata = diagnose(net, result.guide, data, num_samples=s, pruning_points=0)
    theta = result.guide.gate_theta(net.site("hidden.gate")).detach().clamp(0, 1).numpy()
    gates = idata.posterior["hidden.gate"].values[0]
    assert set(np.unique(gates)) <= {0, 1}
    np.testing.assert_allclose(
        idata.posterior["hidden.gate_prob"].values[0], theta[None].repeat(s, 0)
    )
    tol = 4 * np.sqrt(theta * (1 - theta) / s) + 1e-9
    assert np.all(np.abs(gates.mean(0) - theta) <= tol)
    norms = idata.posterior["hidden.weight_norm"].values[0]
    w = result.guide.point()["hidden.weight"].norm(dim=1).numpy()
    np.testing.assert_allclose(norms, gates * w[None], rtol=1e-6)


def test_netcdf_round_trip_keeps_values_and_attrs(gated, data, tmp_path):
    net, result = gated
    idata = diagnose(net, result.guide, data, num_samples=6, result=result)
    path = tmp_path / "idata.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        for name, var in idata[group].data_vars.items():
            np.testing.assert_array_equal(back[group][name].values, var.values)
            assert back[group][name].dims == var.dims
        for dim, coord in idata[group].coords.items():
            np.testing.assert_array_equal(back[group][dim].values, coord.values)
    for key, value in idata.posterior.attrs.items():
        got = back.posterior.attrs[key]
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got)
        else:
            assert got == value, key


# arviz 0.23's matplotlib backend calls an API matplotlib 3.11 deprecates
@pytest.mark.filterwarnings("ignore:Passing a dict or None as alias_mapping")
def test_arviz_summary_and_plots_run_on_gate_variables(gated, data):
    import matplotlib.pyplot as plt

    net, result = gated
    idata = diagnose(net, result.guide, data, num_samples=20, pruning_points=0)
    gates = ["hidden.gate", "hidden.gate_prob"]
    summary = az.summary(idata, var_names=gates, kind="stats")
    units = idata.posterior["hidden_unit"].values.tolist()
    assert summary.index.tolist()[: len(units)] == [f"hidden.gate[{u}]" for u in units]
    np.testing.assert_allclose(
        summary["mean"].values[: len(units)],
        idata.posterior["hidden.gate"].values[0].mean(0),
        atol=1e-3,  # az.summary rounds
    )
    try:
        axes = az.plot_forest(idata, var_names=gates)
        labels = [t.get_text() for t in axes[0].get_yticklabels()]
        assert any(f"[{units[0]}]" in label for label in labels)
        axes = az.plot_posterior(idata, var_names=["hidden.gate"])
        titles = [a.get_title() for a in np.asarray(axes).flat if a.get_title()]
        assert titles == [f"hidden.gate\n{u}" for u in units]
        with pytest.warns(UserWarning, match="single value"):  # θ is the same in every draw
            az.plot_posterior(idata, var_names=["hidden.gate_prob"])
    finally:
        plt.close("all")


def test_map_guide_says_there_is_no_weight_uncertainty(halo_map, data):
    net, result = halo_map
    idata = diagnose(net, result.guide, data, num_samples=5)
    attrs = idata.posterior.attrs
    assert attrs["weight_uncertainty"] == "none (MAP guide: Delta over weights)"
    norms = idata.posterior["hidden.weight_norm"].values[0]
    assert np.all(norms == norms[0])  # constant over draws, no noise added
    np.testing.assert_allclose(norms[0], result.guide.point()["hidden.weight"].norm(dim=1))
    assert math.isnan(attrs["psis_khat"]) and attrs["psis_khat_note"].startswith("undefined")
    assert attrs["forward_passes"] == 1  # every draw is the same network
    assert attrs["accuracy_predictive"] == attrs["accuracy_point"]


def test_mean_field_khat_is_finite_and_log_weights_add_up(mean_field, data):
    net, result = mean_field
    guide = result.guide
    idata = diagnose(net, guide, data, num_samples=100, seed=3)
    attrs = idata.posterior.attrs
    assert attrs["weight_uncertainty"] == "mean-field Normal"
    assert math.isfinite(attrs["psis_khat"]) and attrs["psis_khat_note"] == ""
    # draw 0 again from the same seed: log w = Σ_i log p(y_i | z) + log p(z) - log q(z)
    torch.manual_seed(3)
    z = draw(guide)
    n = len(data.test)
    ll = idata.log_likelihood["obs"].values[0, 0].astype(np.float64).sum()
    by_hand = ll + float(log_prior(net, z, n)) - float(log_guide(guide, z))
    assert idata.sample_stats["log_weight"].values[0, 0] == pytest.approx(by_hand, rel=1e-9)
    norms = idata.posterior["features.weight_norm"].values[0, 0]
    np.testing.assert_allclose(norms, z["features.weight"].norm(dim=1).numpy(), rtol=1e-6)
    scales = idata.posterior["features.weight_scale"].values[0, 0]
    np.testing.assert_allclose(scales, z["features.weight_scale"].mean(1).numpy(), rtol=1e-6)


def test_predictive_numbers_agree_with_the_log_likelihood_group(mean_field, data):
    net, result = mean_field
    idata = diagnose(net, result.guide, data, num_samples=30)
    attrs = idata.posterior.attrs
    ll = idata.log_likelihood["obs"].values[0].astype(np.float64)  # (draw, obs)
    s = ll.shape[0]
    p_mean = np.exp(ll).mean(0)  # model-averaged probability of the true class
    lse = np.log(np.exp(ll - ll.max(0)).sum(0)) + ll.max(0)
    assert attrs["nll_predictive"] == pytest.approx(-(lse - math.log(s)).mean(), rel=1e-9)
    # the arg-max of the model average is right whenever p̄(y) > 1/2, and only if p̄(y) >= 1/3
    assert np.mean(p_mean > 0.5) <= attrs["accuracy_predictive"] <= np.mean(p_mean >= 1 / 3)
    point = evaluate(net, result.guide, data.test)
    assert attrs["accuracy_point"] == pytest.approx(point["accuracy"])
    assert attrs["nll_point"] == pytest.approx(point["nll"], rel=1e-5)
    obs = idata.posterior_predictive["obs"].values
    assert obs.min() >= 0 and obs.max() < 3 and len(np.unique(obs)) > 1
    cal = idata.calibration
    assert cal.sizes["bin"] == 15 and int(cal["count"].sum()) == len(data.test)
    assert 0 <= attrs["ece_predictive"] <= 1


def test_inclusion_group_is_inclusion_probs(mean_field, data):
    net, result = mean_field
    idata = diagnose(net, result.guide, data, num_samples=2, pruning_points=0)
    probs = inclusion_probs(net, result.guide)
    for layer in ("features", "head"):
        var = idata.inclusion[f"{layer}.p_keep"]
        assert var.dims == (f"{layer}_out", f"{layer}_in")
        np.testing.assert_array_equal(var.values, probs[layer].numpy())
    assert idata.posterior.attrs["inclusion_kind"] == "normal"


def test_global_rng_untouched_and_seed_reproducible(mean_field, data):
    net, result = mean_field
    before = torch.get_rng_state()
    a = diagnose(net, result.guide, data, num_samples=4, seed=1, pruning_points=0)
    assert torch.equal(torch.get_rng_state(), before)
    b = diagnose(net, result.guide, data, num_samples=4, seed=1, pruning_points=0)
    c = diagnose(net, result.guide, data, num_samples=4, seed=2, pruning_points=0)
    w = "features.weight_norm"
    np.testing.assert_array_equal(a.posterior[w].values, b.posterior[w].values)
    assert not np.array_equal(a.posterior[w].values, c.posterior[w].values)


def test_fit_trace_in_sample_stats(gated, data):
    net, result = gated
    stats = diagnose(net, result.guide, data, num_samples=2, result=result).sample_stats
    assert stats["elbo"]["step"].values.tolist() == result.elbo_steps
    np.testing.assert_allclose(stats["elbo"].values, result.elbo)
    np.testing.assert_allclose(stats["loss_epoch"].values, [h["loss"] for h in result.history])
    units = [h["units"]["hidden"] for h in result.history]
    assert stats["units_alive"].sel(layer="hidden").values.tolist() == units
    assert stats["log_weight"].dims == ("chain", "draw")
    assert stats["lr"].dims == ("epoch", "role")
    assert stats["lr"].sel(role="gate").values.tolist() == [0.1] * 4  # role_lr, no schedule
    assert set(stats["lr"]["role"].values) == {"gate", "weight", "deterministic"}
    bare = diagnose(net, result.guide, data, num_samples=2).sample_stats
    assert set(bare.data_vars) == {"log_weight"}


def test_pruning_sweep_reaches_the_point_estimate(halo_map, data):
    net, result = halo_map
    idata = diagnose(net, result.guide, data, num_samples=2, pruning_points=5, predict_samples=2)
    sweep = idata.pruning
    kept = sweep["kept_fraction"].values
    assert sweep.sizes["threshold"] == 5 and np.all(np.diff(kept) > 0) and kept[-1] == 1.0
    # everything kept: the collapsed network is the posterior point estimate
    assert sweep["accuracy"].values[-1] == pytest.approx(idata.posterior.attrs["accuracy_point"])
    assert sweep["accuracy_predicted"].shape == (5,)
    assert np.all((sweep["accuracy"].values >= 0) & (sweep["accuracy"].values <= 1))
    assert "accuracy_predicted" not in diagnose(net, result.guide, data, num_samples=2).pruning


def test_split_choice_and_max_examples(halo_map, data):
    net, result = halo_map
    no_test = Dataset(train=data.train, val=data.val, n_classes=3)
    idata = diagnose(net, result.guide, no_test, num_samples=2, max_examples=10)
    assert idata.posterior.attrs["split"] == "val"
    assert idata.observed_data.sizes["obs_id"] == 10
    pair = diagnose(net, result.guide, (data.val.x, data.val.y), num_samples=2, pruning_points=0)
    assert pair.posterior.attrs["split"] == "given"


def test_bad_inputs_name_the_argument(halo_map, data):
    net, result = halo_map
    guide = result.guide
    x, y = data.test.x, data.test.y
    with pytest.raises(TypeError, match="data"):
        diagnose(net, guide, [1, 2, 3])
    with pytest.raises(ValueError, match="num_samples"):
        diagnose(net, guide, data, num_samples=0)
    with pytest.raises(ValueError, match="y must hold one target per input"):
        diagnose(net, guide, (x, y[:-1]))
    with pytest.raises(ValueError, match="y does not fit"):
        diagnose(net, guide, (x, y.float()))
    with pytest.raises(TypeError, match="net"):
        diagnose(net.module, guide, data)
    with pytest.raises(ValueError, match="guide does not match net"):
        other = bp.sparsify(named_mlp(), UnitGates())
        diagnose(other, guide, data)
    with pytest.raises(TypeError, match="result"):
        diagnose(net, guide, data, result={"elbo": []})


def test_root_module_and_conv_layers_are_named(nets, inputs):
    x = inputs("conv", 12)
    y = torch.arange(12) % 4
    net = bp.sparsify(nets["conv"](), HALO(per="unit"))
    idata = diagnose(net, MeanField(net), (x, y), num_samples=3, weights=True, pruning_points=0)
    assert idata.posterior["conv.weight"].dims[2:] == ("conv_out", "conv_in", "conv_kh", "conv_kw")
    assert idata.posterior["conv.weight_scale"].dims[2:] == ("conv_unit",)
    assert idata.inclusion["conv.p_keep"].dims == ("conv_unit",)
    root = bp.sparsify(nn.Linear(8, 3), HALO(), layers=nn.Linear)
    x, y = inputs("mlp", 6), torch.arange(6) % 3
    idata = diagnose(root, MAP(root), (x, y), num_samples=2, pruning_points=0)
    assert set(idata.posterior.data_vars) == {"weight_scale", "weight_norm"}
    assert idata.posterior["weight_norm"].dims[2:] == ("net_unit",)


def test_a_loader_is_diagnosed_like_its_tensors(mean_field, data):
    from torch.utils.data import DataLoader, TensorDataset

    net, result = mean_field
    guide, test = result.guide, data.test
    loader = DataLoader(TensorDataset(test.x, test.y), batch_size=5)
    a = diagnose(net, guide, loader, num_samples=4, max_examples=12, pruning_points=0)
    b = diagnose(net, guide, (test.x[:12], test.y[:12]), num_samples=4, pruning_points=0)
    np.testing.assert_allclose(
        a.log_likelihood["obs"].values, b.log_likelihood["obs"].values, rtol=1e-6
    )
