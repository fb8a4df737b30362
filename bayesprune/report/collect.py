"""Read what each report figure needs out of an ``InferenceData`` (and a ``FitResult``).

Every reader returns plain numbers, or raises :class:`Missing` with one sentence saying
why the figure cannot be drawn; the report then states that sentence instead of
drawing an empty plot. The layout read is the contract of
:func:`bayesprune.diagnostics.diagnose` (groups ``posterior``, ``sample_stats``,
``inclusion``, ``pruning``, ``calibration``; variables ``"{layer}.{what}"``).

>>> import xarray as xr
>>> from bayesprune.diagnostics._arviz import az
>>> idata = az.InferenceData(sample_stats=xr.Dataset({"elbo": ("step", [3.0, 2.0])},
...                                                  coords={"step": [50, 100]}))
>>> elbo(idata, None, {"guide": "mean_field"})
([50, 100], [3.0, 2.0], '-ELBO / n')
>>> calibration(idata)
Traceback (most recent call last):
...
bayesprune.report.collect.Missing: the InferenceData has no 'calibration' group (diagnose writes it for classification data)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bayesprune.pruning.keepset import KeepSet
from bayesprune.sites import join

__all__ = [
    "Missing",
    "NotUsed",
    "accuracy_curve",
    "budget_history",
    "calibration",
    "elbo",
    "element_totals",
    "inclusion",
    "inclusion_table",
    "key_numbers",
    "module_units",
    "shrinkage",
    "units_history",
    "widths",
]


class Missing(Exception):
    """The data a figure needs is absent; the message says why."""


class NotUsed(Missing):
    """The run did not use what the figure is about (a budget): the report leaves the
    figure out without a note."""


def _group(idata: Any, name: str) -> Any:
    if idata is None or name not in idata.groups():
        raise Missing(f"the InferenceData has no {name!r} group")
    return idata[name]


def _var(ds: Any, name: str) -> np.ndarray | None:
    return np.asarray(ds[name].values) if name in ds.data_vars else None


def key_numbers(idata: Any) -> dict[str, Any]:
    """The posterior's attrs (accuracy, NLL, ECE, PSIS k̂, guide, prior, split...), with
    ``prior`` decoded from JSON; empty when there is no posterior group."""
    if idata is None or "posterior" not in idata.groups():
        return {}
    attrs = dict(idata.posterior.attrs)
    if isinstance(attrs.get("prior"), str):
        with contextlib.suppress(json.JSONDecodeError):
            attrs["prior"] = json.loads(attrs["prior"])
    return attrs


def _has_gates(idata: Any) -> bool:
    if idata is None or "posterior" not in idata.groups():
        return False
    return any(str(v).endswith("gate") for v in idata.posterior.data_vars)


def elbo(idata: Any, result: Any, attrs: Mapping[str, Any]) -> tuple[list, list, str]:
    """``(steps, values, label)`` of the training objective per logged step, from
    ``sample_stats["elbo"]`` or else ``result.elbo``. A MAP guide on a model without
    gates optimises the negative log joint, anything else a negative ELBO."""
    steps: list = []
    values: list = []
    if idata is not None and "sample_stats" in idata.groups():
        ss = idata.sample_stats
        if "elbo" in ss.data_vars:
            values = [float(v) for v in ss["elbo"].values]
            dim = ss["elbo"].dims[0]
            steps = [int(s) for s in ss[dim].values]
    if not values and result is not None and getattr(result, "elbo", None):
        values = [float(v) for v in result.elbo]
        steps = list(getattr(result, "elbo_steps", None) or range(1, len(values) + 1))
    if not values:
        raise Missing("no ELBO trace: pass the FitResult to diagnose or report")
    guide = str(attrs.get("guide", getattr(getattr(result, "guide", None), "name", "")))
    label = "negative log joint / n" if guide == "map" and not _has_gates(idata) else "-ELBO / n"
    return steps, values, label


def units_history(idata: Any, result: Any) -> tuple[list[int], dict[str, list[int]]]:
    """``(epochs, {layer: units alive after each epoch})`` from ``sample_stats["units_alive"]``
    or else ``result.history[i]["units"]``."""
    if idata is not None and "sample_stats" in idata.groups():
        ss = idata.sample_stats
        if "units_alive" in ss.data_vars:
            da = ss["units_alive"].transpose("epoch", "layer")
            layers = [str(n) for n in da["layer"].values]
            epochs = [int(e) for e in da["epoch"].values]
            vals = np.asarray(da.values)
            return epochs, {n: [int(v) for v in vals[:, i]] for i, n in enumerate(layers)}
    history = list(getattr(result, "history", None) or [])
    records = [h for h in history if isinstance(h.get("units"), Mapping)]
    if not records:
        raise Missing(
            "no units-alive history: the prior does not track units alive (only unit-gate "
            "priors do), or no FitResult/history was given"
        )
    epochs = [int(h.get("epoch", i + 1)) for i, h in enumerate(records)]
    layers = list(records[-1]["units"])
    return epochs, {n: [int(h["units"].get(n, 0)) for h in records] for n in layers}


def budget_history(result: Any) -> dict[str, Any]:
    """What a budgeted fit recorded (:mod:`bayesprune.pruning.budget_control`), from
    ``result.history[i]["budget_trace"]`` and ``["budget"]``:

    - ``metric``, ``target``: the budget (a fraction, or ``{layer: fraction}`` per layer);
    - ``layers``: ``None``, or the layers of a per-layer units budget, in the trace's order;
    - ``steps``: the optimizer step of every controller update, over all epochs;
    - ``multiplier``, ``size``, ``schedule``: the prior's strength multiplier, the
      posterior's size (fraction of the dense network) and the scheduled target it was
      steered to, at each update: shape ``(updates,)``, or ``(updates, layers)``;
    - ``cut``: ``{"step", "posterior", "final", "cut"}`` when the posterior was cut to the
      budget during the fit, else ``None``;
    - ``final``: the last epoch's ``{"multiplier", "size", "phase"}``;
    - ``end``: the fit's last optimizer step (from ``result.elbo_steps``), or ``None``.

    >>> from types import SimpleNamespace
    >>> h = [{"budget": {"metric": "flops", "target": 0.5, "multiplier": 1.0, "size": 0.5,
    ...                  "phase": "steer"}, "budget_trace": [[0, 1.2, 0.9, 0.8]]}]
    >>> b = budget_history(SimpleNamespace(history=h, elbo_steps=[20]))
    >>> b["steps"], b["size"].tolist(), b["cut"], b["end"]
    ([0], [0.9], None, 20)

    :raises NotUsed: the fit had no budget (or no FitResult/history was given).
    """
    history = [h for h in getattr(result, "history", None) or [] if isinstance(h, Mapping)]
    records = [h for h in history if isinstance(h.get("budget"), Mapping)]
    rows = [row for h in records for row in h.get("budget_trace") or []]
    if not records or not rows:
        raise NotUsed("the fit had no budget (no 'budget_trace' in the history)")
    last = records[-1]["budget"]
    target = last.get("target")
    layers = sorted(target) if isinstance(target, Mapping) else None
    n = 1 if layers is None else len(layers)

    def column(i: int) -> np.ndarray:
        values = np.asarray([row[i] for row in rows], dtype=float)
        if values.shape != ((len(rows),) if layers is None else (len(rows), n)):
            raise Missing(f"the budget trace's rows do not hold {n} value(s) per column")
        return values

    cuts = [h["budget"]["cut_report"] for h in records if "cut_report" in h["budget"]]
    steps = list(getattr(result, "elbo_steps", None) or [])
    return {
        "metric": str(last.get("metric")),
        "target": dict(target) if layers is not None else float(target),
        "layers": layers,
        "steps": [int(row[0]) for row in rows],
        "multiplier": column(1),
        "size": column(2),
        "schedule": column(3),
        "cut": dict(cuts[0]) if cuts else None,
        "final": {k: last.get(k) for k in ("multiplier", "size", "phase")},
        "end": int(steps[-1]) if steps else None,
    }


def inclusion(idata: Any, layers: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``({layer: p_keep}, {layer: "units" | "weights"})`` from the ``inclusion`` group."""
    ds = _group(idata, "inclusion")
    probs: dict[str, np.ndarray] = {}
    element: dict[str, str] = {}
    for layer in layers:
        p = _var(ds, join(layer, "p_keep"))
        if p is None:
            continue
        probs[layer] = p
        element[layer] = "units" if p.ndim <= 1 else "weights"
    if not probs:
        raise Missing("the 'inclusion' group has no '<layer>.p_keep' variable for any layer")
    return probs, element


def inclusion_table(
    idata: Any, layers: Sequence[str], keep: Mapping[str, KeepSet] | None = None
) -> list[dict[str, Any]]:
    """One row per layer: elements, mean inclusion probability, how many are likely in
    (p ≥ 0.5), surely in (p ≥ 0.9), surely out (p < 0.1), and kept by the collapse."""
    probs, element = inclusion(idata, layers)
    rows = []
    for layer, p in probs.items():
        p = p.ravel().astype(float)
        rows.append(
            {
                "layer": layer,
                "element": element[layer],
                "n": int(p.size),
                "mean": float(p.mean()),
                "ge_0.5": int((p >= 0.5).sum()),
                "ge_0.9": int((p >= 0.9).sum()),
                "lt_0.1": int((p < 0.1).sum()),
                "kept": keep[layer].n_kept if keep is not None and layer in keep else None,
            }
        )
    return rows


def shrinkage(
    idata: Any, layers: Sequence[str], attrs: Mapping[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``({layer: unit weight norms}, {layer: unit scales})``, posterior means, for HALO."""
    prior = attrs.get("prior")
    name = prior.get("name") if isinstance(prior, Mapping) else None
    if name != "halo":
        raise Missing(
            f"the prior is {name or 'unknown'}, not HALO: there are no shrinkage scales to plot"
        )
    post = _group(idata, "posterior")
    norms, scales = {}, {}
    for layer in layers:
        lam = _var(post, join(layer, "weight_scale"))
        w = _var(post, join(layer, "weight_norm"))
        if lam is None or w is None:
            continue
        lam, w = lam.mean(axis=(0, 1)).ravel(), w.mean(axis=(0, 1)).ravel()
        if lam.shape != w.shape:
            continue
        norms[layer], scales[layer] = w, lam
    if not norms:
        raise Missing(
            "the posterior has no per-unit '<layer>.weight_scale' and '<layer>.weight_norm' "
            "pair for any layer"
        )
    return norms, scales


def accuracy_curve(idata: Any) -> dict[str, Any]:
    """``{"kept", "accuracy", "predicted", "default"}`` from the ``pruning`` group: kept
    fractions (of the fitted network's prunable elements) and accuracies, the Monte-Carlo
    forecast if present, and the default collapse's ``(kept, accuracy)`` if recorded."""
    try:
        ds = _group(idata, "pruning")
    except Missing as e:
        raise Missing(
            f"{e} (diagnose writes it for classification data when pruning_points > 0)"
        ) from None
    kept, acc = _var(ds, "kept_fraction"), _var(ds, "accuracy")
    if kept is None or acc is None or kept.size < 2:
        raise Missing("the 'pruning' group needs 'kept_fraction' and 'accuracy' at 2+ points")
    default = None
    if "default_kept_fraction" in ds.attrs and "default_accuracy" in ds.attrs:
        default = (float(ds.attrs["default_kept_fraction"]), float(ds.attrs["default_accuracy"]))
    return {
        "kept": kept.ravel(),
        "accuracy": acc.ravel(),
        "predicted": _var(ds, "accuracy_predicted"),
        "default": default,
    }


def calibration(idata: Any) -> dict[str, np.ndarray]:
    """The reliability-diagram bins of the ``calibration`` group."""
    try:
        ds = _group(idata, "calibration")
    except Missing as e:
        raise Missing(f"{e} (diagnose writes it for classification data)") from None
    names = ["bin_lower", "bin_upper", "confidence", "accuracy", "count"]
    out = {n: _var(ds, n) for n in names}
    if any(v is None for v in out.values()) or not np.nansum(out["count"]) > 0:
        raise Missing(f"the 'calibration' group needs {names} with at least one prediction")
    return {n: np.nan_to_num(np.asarray(v, dtype=float)) for n, v in out.items()}


def module_units(module: nn.Module, layer: str) -> int | None:
    """Output units of ``layer`` in ``module`` (rows of its weight), ``None`` if it has none."""
    try:
        sub = module.get_submodule(layer)
    except AttributeError:
        return None
    w = getattr(sub, "weight", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() >= 2 else None


def _units_kept(ks: KeepSet) -> int:
    if ks.units is not None or ks.weight_mask is None:
        return ks.n_kept
    mask = ks.weight_mask
    return int(mask.reshape(mask.shape[0], -1).any(dim=1).sum()) if mask.dim() >= 2 else 1


def widths(
    layers: Sequence[str],
    original: nn.Module,
    extracted: nn.Module,
    keep: Mapping[str, KeepSet] | None,
) -> dict[str, tuple[int, int]]:
    """``{layer: (units before, units after)}``. With keep-sets: their kept units (for an
    unstructured mask, units with at least one kept weight; for a residual block, 1 or 0);
    without: the rows of each layer's weight in the original and the extracted module."""
    out: dict[str, tuple[int, int]] = {}
    for layer in layers:
        before = module_units(original, layer)
        if keep is not None and layer in keep:
            ks = keep[layer]
            if before is None:  # a residual block: one element
                before = ks.n_units or 1
            out[layer] = (before, _units_kept(ks))
            continue
        after = module_units(extracted, layer)
        if before is not None and after is not None:
            out[layer] = (before, after)
    return out


def _size_now(ks: KeepSet) -> int:
    """Prunable elements of a layer in the fitted network (as the pruning sweep counts)."""
    if ks.weight_mask is not None and ks.units is None:
        return ks.weight_mask.numel()
    return ks.n_units or 1


def _size_original(original: nn.Module, layer: str, ks: KeepSet) -> int:
    if ks.weight_mask is not None and ks.units is None:
        w = getattr(original.get_submodule(layer), "weight", None)
        return int(w.numel()) if isinstance(w, torch.Tensor) else ks.weight_mask.numel()
    return module_units(original, layer) or ks.n_units or 1


def element_totals(original: nn.Module, keep: Mapping[str, KeepSet]) -> tuple[int, int, int]:
    """``(kept, total in the fitted network, total in the original network)``: prunable
    elements (units; weights for unstructured masks; blocks) over the layers of ``keep``.
    The two totals differ when units were removed during the fit."""
    kept = sum(ks.n_kept for ks in keep.values())
    now = sum(_size_now(ks) for ks in keep.values())
    before = sum(_size_original(original, n, ks) for n, ks in keep.items())
    return kept, now, before
