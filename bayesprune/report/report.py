"""``report``: PNG figures, ``report.html`` and ``report.md`` for one fitted run.

>>> import tempfile, torch, torch.nn as nn
>>> from bayesprune import fit, sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.data import synthetic_classification
>>> data = synthetic_classification(64, 16, 16, input_shape=(4,), n_classes=2)
>>> net = sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), HALO(per="unit"))
>>> result = fit(net, data, epochs=1, batch_size=32, progress=False)
>>> html = report(net, result, None, out=tempfile.mkdtemp(), measure_latency=False)
>>> html.name, (html.parent / "report.md").is_file()
('report.html', True)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.export.safetensors_io import atomic_write_bytes
from bayesprune.metrics import paired_latency, summarize
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.unit_origin import unit_origin
from bayesprune.pruning import KeepSet, collapse, extract
from bayesprune.pruning.predict import forecast_split, predict_pruning
from bayesprune.report import collect, plots
from bayesprune.report.collect import Missing
from bayesprune.report.content import Content, FigureEntry
from bayesprune.report.html import render_html
from bayesprune.report.markdown import render_markdown
from bayesprune.report.numbers import (
    budget_rows,
    cost_rows,
    explanations,
    key_number_rows,
    setting_rows,
)

__all__ = ["original_network", "report"]

log = logging.getLogger(__name__)


def original_network(net: BayesianNet, original: nn.Module | None = None) -> nn.Module:
    """The network as built before any pruning: ``original`` if given; else ``net.module``
    when no unit was removed during the fit; else a fresh copy rebuilt from the module's
    zoo ``config`` (same architecture, new weights: enough for parameters, FLOPs, latency).

    :raises ValueError: when units were removed and the module has no zoo ``config``.
    """
    if original is not None:
        if not isinstance(original, nn.Module):
            raise UnsupportedError(
                f"report: original must be an nn.Module, got {type(original).__name__}"
            )
        return original
    if unit_origin(net) is None:
        return net.module
    config = getattr(net.module, "config", None)
    if isinstance(config, Mapping) and "name" in config:
        from bayesprune.zoo import from_config

        with torch.random.fork_rng(devices=[]):
            return from_config(dict(config)).to(net.device)
    raise ConfigError(
        "report: units were removed from the network during fit(remove_dead=True), so "
        "net.module is no longer the original architecture, and it has no zoo 'config' to "
        "rebuild it from; pass original=<the network as built, before fitting>"
    )


def forecast_rows(
    net: BayesianNet,
    guide: Any,
    keep: dict[str, KeepSet],
    extracted: nn.Module,
    data: Any,
    num_samples: int,
) -> list[tuple[str, str, str]]:
    """Key-number rows: the accuracy :func:`predict_pruning` forecasts for ``keep`` before
    extraction, and the accuracy of ``extracted`` measured on the same examples."""
    f = predict_pruning(net, guide, keep, data, num_samples=num_samples)
    x, y, split = forecast_split(data)
    was = extracted.training
    extracted.eval()
    with torch.inference_mode():
        out = torch.cat([extracted(_on_device_of(extracted, xb)) for xb in x.split(1024)])
    extracted.train(was)
    measured = float((out.argmax(-1).cpu() == y.cpu()).double().mean())
    where = f"{split} split, {len(y)} examples"
    return [
        (
            "Forecast accuracy after pruning",
            f"{100 * f.accuracy_point:.2f}%",
            f"before extraction: {where}; over {num_samples} posterior draws pruning changes "
            f"accuracy by {100 * f.accuracy_change:+.2f} ± {100 * f.accuracy_change_se:.2f} pt",
        ),
        (
            "Measured accuracy, extracted network",
            f"{100 * measured:.2f}%",
            f"{where}; measured − forecast = {100 * (measured - f.accuracy_point):+.2f} pt",
        ),
    ]


def _on_device_of(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the device of ``module``'s first parameter (unchanged for a parameter-free one)."""
    for p in module.parameters():
        return x.to(p.device)
    return x


class _Inputs:
    """What the figure makers read, gathered once."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _elbo(d: _Inputs):
    steps, values, label = collect.elbo(d.idata, d.result, d.attrs)
    caption = (
        f"{label}: the training loss per example, averaged over each logged window of steps. "
        + (
            "The MAP guide has no entropy term: this is the negative log joint density."
            if label.startswith("negative")
            else "Lower is better; its decrease flattens as the fit converges."
        )
    )
    if d.result is not None and getattr(d.result, "removed", None):
        caption += (
            " Units were removed during the fit: each removal drops the removed weights' "
            "prior terms (their normalising constants included) from the objective, so it "
            "steps down at the epochs where units were cut, beyond what the fit improved."
        )
    return plots.elbo_trace(steps, values, label=label), caption


def _units(d: _Inputs):
    epochs, units = collect.units_history(d.idata, d.result)
    original = {n: w[0] for n, w in d.widths.items()}
    return plots.units_alive(epochs, units, original), (
        "Units whose gate probability is above 0 after each epoch, relative to the layer's "
        "original width (epoch 0 = the untrained network)."
    )


def _budget(d: _Inputs):
    if isinstance(d.budget, Missing):
        raise d.budget
    b = d.budget
    layers, cut, final = b["layers"], b["cut"], b["final"]
    per = layers is not None
    budget = [b["target"][n] for n in layers] if per else b["target"]
    after = None
    if cut is not None and final.get("phase") == "cut":
        ms, sizes = final["multiplier"], final["size"]
        after = (ms, sizes) if per else ([ms], [sizes])
    fig = plots.budget_trace(
        b["steps"],
        b["multiplier"],
        b["size"],
        b["schedule"],
        budget=budget,
        metric=b["metric"],
        layers=layers,
        cut_step=None if cut is None else int(cut["step"]),
        after_cut=after,
        end=b["end"],
    )
    of = {"flops": "FLOPs (multiply-accumulates per example)"}.get(
        b["metric"], plots.BUDGET_OF.get(b["metric"], b["metric"])
    )
    caption = (
        f"The budgeted fit's controller at each of its {len(b['steps'])} updates"
        + (", one line per layer of the per-layer budget" if per else "")
        + ". Top: the multiplier m of the prior's sparsity strength (log scale; dotted: "
        "m = 1, the prior as configured). Bottom: the posterior's size as the controller "
        "measured it (for gates the expected size under q, for HALO the elements above "
        "the prior's threshold), in % of "
        + ("each layer's units as built" if per else f"the dense network's {of}")
        + "; the scheduled target each update steered to (the schedule read the "
        "controller's lookahead ahead of the step); and the budget."
    )
    if cut is None:
        caption += " The posterior was not cut during the fit (collapse(budget=...) cuts it)."
    elif after is None:
        caption += f" At step {int(cut['step'])} the posterior was cut to the budget."
    else:
        caption += (
            f" At step {int(cut['step'])} the posterior was cut to the budget and held: the "
            "controller stops there, m is released, and the stars and thick lines show the "
            "multiplier and size recorded at the end of the fit."
        )
    return fig, caption


def _inclusion(d: _Inputs):
    probs, element = collect.inclusion(d.idata, d.layers)
    for n in probs:  # a layer without a weight carrying one gate is a residual block
        if collect.module_units(d.net_module, n) is None and probs[n].size == 1:
            element[n] = "block"
    caption = "Posterior probability that each element is kept, per layer."
    if d.removed:
        caption += (
            " Units removed during training (remove_dead) are not part of the posterior and "
            "are not counted here."
        )
    removed = {
        n: d.widths[n][0] - collect.module_units(d.net_module, n)
        for n in probs
        if n in d.widths and collect.module_units(d.net_module, n) is not None
    }
    return plots.inclusion_histograms(probs, element, removed), caption


def _shrinkage(d: _Inputs):
    norms, scales = collect.shrinkage(d.idata, d.layers, d.attrs)
    return plots.shrinkage_profile(norms, scales), (
        "Each point is a unit: the L2 norm of its weights against its shrinkage scale λ. "
        "HALO's Laplace prior has scale λ²/ξ, so units with small λ are pulled to zero."
    )


def _accuracy(d: _Inputs):
    curve = collect.accuracy_curve(d.idata)
    split = str(d.attrs.get("split", "test"))
    kept, default, chosen = curve["kept"], curve["default"], None
    caption = f"Accuracy of the collapsed network on the {split} split at each kept fraction"
    if d.totals is not None:  # fractions of the original network, also after live removal
        n_kept, now, before = d.totals
        scale = now / max(before, 1)
        kept = kept * scale
        default = None if default is None else (default[0] * scale, default[1])
        chosen = n_kept / max(before, 1)
        base = "the original network's prunable elements"
        if now != before:
            caption += (
                f" ({before - now} units were removed during training, so at most "
                f"{100 * scale:.1f}% can be kept)"
            )
        caption += "; the dotted line marks the collapse used for the extracted network."
    else:
        base = "the fitted network's prunable elements"
        caption += "; the collapse used for the extracted network is unknown (no keep-sets)."
    fig = plots.accuracy_vs_kept(
        kept,
        curve["accuracy"],
        predicted=curve["predicted"],
        chosen=chosen,
        default=default,
        split=split,
        base=base,
    )
    return fig, caption


def _reliability(d: _Inputs):
    bins = collect.calibration(d.idata)
    ece = d.attrs.get("ece_predictive")
    fig = plots.reliability_diagram(
        bins["bin_lower"],
        bins["bin_upper"],
        bins["confidence"],
        bins["accuracy"],
        bins["count"],
        ece=float(ece) if ece is not None else None,
    )
    return fig, (
        "Accuracy against confidence of the posterior predictive (model average over the "
        "draws); bars below the diagonal are over-confident."
    )


def _widths(d: _Inputs):
    if not d.widths:
        raise Missing("no layer has units in both the original and the extracted network")
    names = list(d.widths)
    before = [d.widths[n][0] for n in names]
    after = [d.widths[n][1] for n in names]
    caption = "Units (output neurons / channels) per pruned layer."
    if d.keep is not None and any(k.weight_mask is not None for k in d.keep.values()):
        caption += " For unstructured masks: units with at least one kept weight."
    return plots.layer_widths(names, before, after), caption


def _cost(d: _Inputs):
    b, a = d.before, d.after
    panels = [
        ("parameters", "count", b["params"], a["params"]),
        ("FLOPs", "per example", b["flops"], a["flops"]),
    ]
    for lb, la in zip(b["latency"], a["latency"], strict=False):
        panels.append(
            (
                f"latency, batch {la['batch_size']}",
                "ms per batch (median)",
                1e3 * lb["median"],
                1e3 * la["median"],
            )
        )
    caption = (
        "Stored parameters, dense FLOPs per example"
        + (" and median latency" if b["latency"] else " (latency not measured)")
        + " of the original and the extracted network."
    )
    if b["latency"]:
        caption += (
            " Latency was timed on this machine, the two networks interleaved; other load on "
            "the machine makes it noisy, so compare only numbers from one report."
        )
    return plots.cost_before_after(panels), caption


#: (file stem, title, maker) in report order
FIGURES: list[tuple[str, str, Callable[[_Inputs], tuple[Any, str]]]] = [
    ("elbo", "Training objective", _elbo),
    ("units_alive", "Units alive during training", _units),
    ("budget", "Budget: strength multiplier and size over the fit", _budget),
    ("inclusion", "Inclusion probabilities", _inclusion),
    ("shrinkage", "Shrinkage profile (HALO)", _shrinkage),
    ("accuracy_vs_kept", "Accuracy vs kept fraction", _accuracy),
    ("reliability", "Reliability diagram", _reliability),
    ("layer_widths", "Width per layer", _widths),
    ("cost", "Parameters, FLOPs and latency", _cost),
]


def report(
    net: BayesianNet,
    result: Any,
    idata: Any,
    *,
    out: str | os.PathLike,
    extracted: nn.Module | None = None,
    keep: dict[str, KeepSet] | None = None,
    original: nn.Module | None = None,
    example_input: torch.Tensor | None = None,
    data: Any = None,
    forecast_samples: int = 32,
    measure_latency: bool = True,
    title: str | None = None,
) -> Path:
    """Write the figures (PNG), ``report.html`` (self-contained) and ``report.md`` into ``out``.

    A figure whose data is absent (no HALO prior, no calibration group, ...) is not drawn;
    the report says why.

    :param net: the fitted model.
    :param result: the :class:`~bayesprune.FitResult` (its ``guide``, ELBO trace and
        history are used; a budgeted fit's history adds the budget figure and key
        numbers), or ``None`` when ``keep`` or ``extracted`` is given.
    :param idata: the ``InferenceData`` from :func:`bayesprune.diagnose` (may be ``None``:
        only the figures that need no diagnostics are drawn).
    :param out: folder for the files (created).
    :param extracted: the extracted network (default: ``extract(net, keep)``).
    :param keep: the keep-sets (default: ``collapse(net, result.guide)``, the prior's default
        rule, unless ``extracted`` is given).
    :param original: the network as built, before any pruning: needed when units were
        removed during the fit and ``net.module`` has no zoo ``config`` (see
        :func:`original_network`).
    :param example_input: a batch for FLOPs and latency (default ``net.example_input``).
    :param data: held-out data (as for :func:`~bayesprune.predict_pruning`: a Dataset's val
        split, else test, or an ``(x, y)`` pair). With it the report sets the accuracy
        :func:`~bayesprune.predict_pruning` forecasts for the keep-set before extraction
        next to the accuracy of the extracted network measured on the same examples.
    :param forecast_samples: posterior draws of that forecast.
    :param measure_latency: time both networks on the CPU (slow-ish; off for tests).
    :param title: the report's title (default: from the prior and guide).
    :returns: the path of ``report.html``.
    :raises ValueError: for a missing guide, example input or original network.
    """
    if not isinstance(net, BayesianNet):
        raise UnsupportedError(f"report: net must be a BayesianNet, got {type(net).__name__}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if extracted is None and keep is None:
        guide = getattr(result, "guide", None)
        if guide is None:
            raise ConfigError(
                "report: pass result (a FitResult with its guide), keep= or extracted="
            )
        keep = collapse(net, guide)
    if extracted is None:
        extracted = extract(net, keep)
    example = example_input if example_input is not None else net.example_input
    if example is None:
        raise ConfigError("report: no example input; pass example_input= (one batch of inputs)")
    before_net = original_network(net, original)
    was = before_net.training, extracted.training
    before_net.eval()
    extracted.eval()
    # the original may be rebuilt (or passed) on the CPU while the fitted net is on a GPU
    before = summarize(before_net, _on_device_of(before_net, example), measure=False)
    after = summarize(extracted, _on_device_of(extracted, example), measure=False)
    if measure_latency:
        before["latency"], after["latency"] = paired_latency(before_net, extracted, example)
    before_net.train(was[0])
    extracted.train(was[1])

    attrs = collect.key_numbers(idata)
    layers = list(net.layer_names)
    widths = collect.widths(layers, before_net, extracted, keep)
    totals = collect.element_totals(before_net, keep) if keep is not None else None
    chosen = totals[0] / max(totals[2], 1) if totals is not None else None
    d = _Inputs(
        idata=idata,
        result=result,
        attrs=attrs,
        layers=layers,
        widths=widths,
        keep=keep,
        totals=totals,
        before=before,
        after=after,
        removed=unit_origin(net) is not None,
        net_module=net.module,
        budget=_budget_history(result),
    )

    content = Content(title=title or _title(net, attrs))
    content.numbers = key_number_rows(attrs, chosen)
    if not isinstance(d.budget, Missing):
        content.numbers += budget_rows(d.budget)
    if data is not None:
        guide = getattr(result, "guide", None)
        if guide is None or keep is None:
            raise ConfigError("report: data= needs result (with its guide) and keep-sets")
        content.numbers += forecast_rows(net, guide, keep, extracted, data, forecast_samples)
    content.settings = setting_rows(attrs)
    content.notes += explanations(attrs)
    content.layers = [(n, b, a) for n, (b, a) in widths.items()]
    content.cost = cost_rows(before, after)
    if not measure_latency:
        content.notes.append("Latency was not measured (measure_latency=False / --no-latency).")
    if idata is None:
        content.notes.append("No InferenceData was given: the diagnostics figures are skipped.")
    try:
        content.inclusion = collect.inclusion_table(idata, layers, keep)
    except Missing as e:
        content.notes.append(f"No inclusion table: {e}.")
    for stem, fig_title, make in FIGURES:
        entry = FigureEntry(stem, fig_title)
        try:
            fig, entry.caption = make(d)
        except collect.NotUsed:
            continue
        except Missing as e:
            entry.skipped = str(e)
            log.info("report: figure %s skipped: %s", stem, e)
        else:
            entry.path = out / f"{stem}.png"
            atomic_write_bytes(entry.path, plots.to_png(fig))
            fig.clear()
        content.figures.append(entry)
    atomic_write_bytes(out / "report.md", render_markdown(content).encode())
    html = out / "report.html"
    atomic_write_bytes(html, render_html(content).encode())
    return html


def _budget_history(result: Any) -> dict[str, Any] | Missing:
    """The budget's record, or why there is none (:class:`~collect.NotUsed`: no budget)."""
    try:
        return collect.budget_history(result)
    except Missing as e:
        return e


def _title(net: BayesianNet, attrs: Mapping[str, Any]) -> str:
    module = type(net.module).__name__
    guide = attrs.get("guide")
    return f"bayesprune report: {module}, {net.prior.name} prior" + (
        f", {guide} guide" if guide else ""
    )
