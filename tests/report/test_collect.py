"""Reading figure data out of real ``diagnose`` output and FitResults."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bayesprune.inference import FitResult
from bayesprune.pruning import KeepSet, collapse
from bayesprune.report import collect
from tests.report.conftest import _mlp


def test_elbo_from_idata_equals_the_fit_trace(gates_run, halo_run):
    for _, result, idata in (gates_run, halo_run):
        attrs = collect.key_numbers(idata)
        steps, values, label = collect.elbo(idata, result, attrs)
        assert steps == result.elbo_steps and values == pytest.approx(result.elbo)
    # MAP over weights, but the gates are random under q: a negative ELBO
    assert collect.elbo(gates_run[2], None, collect.key_numbers(gates_run[2]))[2] == "-ELBO / n"
    # MAP and no random site: the negative log joint
    label = collect.elbo(halo_run[2], None, collect.key_numbers(halo_run[2]))[2]
    assert label == "negative log joint / n"


def test_elbo_falls_back_to_the_result_and_says_when_absent(halo_run):
    net, result, _ = halo_run
    steps, values, _ = collect.elbo(None, result, {})
    assert steps == result.elbo_steps and values == result.elbo
    with pytest.raises(collect.Missing, match="no ELBO trace"):
        collect.elbo(None, FitResult(net, result.guide), {})


def test_units_history_from_idata_and_from_history_agree(gates_run):
    net, result, idata = gates_run
    from_idata = collect.units_history(idata, None)
    from_history = collect.units_history(None, result)
    assert from_idata == from_history
    epochs, units = from_history
    assert epochs == [1, 2, 3]
    assert units == {n: [h["units"][n] for h in result.history] for n in net.layer_names}


def test_units_history_missing_for_halo(halo_run):
    _, result, idata = halo_run
    with pytest.raises(collect.Missing, match="units alive"):
        collect.units_history(idata, result)


def test_inclusion_keys_by_layer(gates_run):
    net, _, idata = gates_run
    probs, element = collect.inclusion(idata, list(net.layer_names))
    assert list(probs) == list(net.layer_names)
    assert set(element.values()) == {"units"}
    for layer, p in probs.items():  # only the units still in the net after live removal
        assert p.shape == (net.module.get_submodule(layer).out_features,)


def test_shrinkage_needs_halo(gates_run, halo_run):
    with pytest.raises(collect.Missing, match="not HALO"):
        collect.shrinkage(gates_run[2], ["0", "2"], collect.key_numbers(gates_run[2]))
    net, result, idata = halo_run
    norms, scales = collect.shrinkage(idata, list(net.layer_names), collect.key_numbers(idata))
    point = result.guide.point()  # MAP: every draw is the point
    for layer in net.layer_names:
        w = point[f"{layer}.weight"].detach()
        assert norms[layer] == pytest.approx(w.norm(dim=1).numpy(), rel=1e-4)
        assert scales[layer].shape == (w.shape[0],)


def test_widths_and_totals_count_against_the_original(gates_run):
    net, result, _ = gates_run
    keep = collapse(net, result.guide)
    original = _mlp()
    widths = collect.widths(list(net.layer_names), original, nn.Identity(), keep)
    assert widths == {n: (original.get_submodule(n).out_features, keep[n].n_kept) for n in keep}
    kept, now, before = collect.element_totals(original, keep)
    assert kept == sum(k.n_kept for k in keep.values())
    assert now == sum(net.module.get_submodule(n).out_features for n in keep)
    assert before == 24 + 16 and now < before  # units were removed during the fit


def test_widths_of_an_unstructured_mask_count_units_with_a_kept_weight():
    mask = torch.tensor([[True, False], [False, False], [False, True]])
    widths = collect.widths(
        ["fc"], nn.Sequential(), nn.Sequential(), {"fc": KeepSet(weight_mask=mask)}
    )
    assert widths == {"fc": (1, 2)}  # no module "fc" in the original: counted as one element
    net = nn.Module()
    net.fc = nn.Linear(2, 3)
    assert collect.widths(["fc"], net, net, {"fc": KeepSet(weight_mask=mask)}) == {"fc": (3, 2)}


def test_calibration_and_pruning_groups(gates_run):
    _, _, idata = gates_run
    bins = collect.calibration(idata)
    assert bins["count"].sum() == idata.posterior.attrs["n_examples"]
    curve = collect.accuracy_curve(idata)
    assert len(curve["kept"]) == len(curve["accuracy"]) >= 2
    assert curve["default"] == (
        idata.pruning.attrs["default_kept_fraction"],
        idata.pruning.attrs["default_accuracy"],
    )
