"""One function per report figure: plain numbers in, a :class:`matplotlib.figure.Figure` out.

The functions never touch pyplot's global state (no ``plt.figure``): each builds its own
``Figure`` on the Agg canvas, so nothing leaks between calls or threads and nothing needs
closing. They draw only what they are given; the caller decides what is missing
(:mod:`bayesprune.report.collect`) and skips a figure instead of drawing an empty one.

>>> fig = elbo_trace([50, 100, 150], [3.2, 2.1, 1.7], label="-ELBO / n")
>>> fig.axes[0].get_xlabel()
'training step'
>>> png = to_png(fig)
>>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
True
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

__all__ = [
    "accuracy_vs_kept",
    "budget_trace",
    "cost_before_after",
    "elbo_trace",
    "inclusion_histograms",
    "layer_widths",
    "reliability_diagram",
    "shrinkage_profile",
    "to_png",
    "units_alive",
]

DPI = 110
BEFORE, AFTER = "#9aa5b1", "#1f6fb2"  # grey = original network, blue = pruned network


def _figure(width: float = 7.5, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # the canvas attaches itself to the figure
    return fig


def to_png(fig: Figure) -> bytes:
    """The figure as PNG bytes (white background)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _label(layer: str) -> str:
    """How a layer is named in legends and titles: ``"conv1"``, ``"layer 0"`` (for
    ``nn.Sequential`` indices), ``"(root)"`` for the root module."""
    if not layer:
        return "(root)"
    return f"layer {layer}" if layer.split(".")[0].isdigit() else layer


def _log_if_wide(ax, values: np.ndarray, axis: str) -> None:
    """Log scale when positive values span more than a decade (else linear, readable ticks)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and v.max() / v.min() > 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _legend(ax, n: int, **kw) -> None:
    """Inside the axes for a few entries; outside, to the right, for many."""
    if n <= 6:
        ax.legend(fontsize="small", framealpha=0.9, **kw)
    else:
        ax.legend(
            fontsize="x-small",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            ncols=1 + n // 20,
            **kw,
        )


def elbo_trace(steps: Sequence[int], values: Sequence[float], *, label: str) -> Figure:
    """The training objective per logged step.

    :param steps: global optimisation step of each value.
    :param values: the objective per example (nats), one per logged window.
    :param label: what the values are, e.g. ``"-ELBO / n"`` or ``"negative log joint / n"``.
    """
    fig = _figure()
    ax = fig.add_subplot()
    y = np.asarray(values, dtype=float)
    ax.plot(steps, y, color=AFTER, lw=1.4, marker="o" if len(y) <= 30 else None, ms=3)
    if len(y) and np.all(y > 0) and y.max() / y.min() > 30:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"{label} (nats per example)")
    ax.set_title(f"Training objective: {label}, mean over each logged window")
    ax.grid(alpha=0.3)
    return fig


def units_alive(
    epochs: Sequence[int],
    units: Mapping[str, Sequence[int]],
    original: Mapping[str, int],
) -> Figure:
    """Units alive per layer after every epoch, as a percentage of the layer's original width.

    :param epochs: epoch numbers (1-based: after that epoch); epoch 0 (the start, every unit
        alive) is drawn for layers whose original width is known.
    :param units: ``{layer: [units alive after each epoch]}``.
    :param original: ``{layer: original number of units}``.
    """
    fig = _figure()
    ax = fig.add_subplot()
    for layer, alive in units.items():
        n0 = original.get(layer) or max(alive)
        xs, ys = list(epochs), [100.0 * a / n0 for a in alive]
        if layer in original:
            xs, ys = [0, *xs], [100.0, *ys]
        ax.plot(xs, ys, marker="o", ms=3, lw=1.3, label=f"{_label(layer)}: {alive[-1]} of {n0}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("units alive (% of the layer's original units)")
    ax.set_ylim(0, 105)
    ax.set_title("Units alive per layer during training (legend: alive at the end)")
    ax.grid(alpha=0.3)
    _legend(ax, len(units))
    return fig


#: what a budget's size is a fraction of, per metric (axis labels)
BUDGET_OF = {
    "weights": "prunable weights",
    "units": "gated units",
    "params": "parameters",
    "flops": "FLOPs",
}
CUT = "#c23030"


def budget_trace(
    steps: Sequence[int],
    multiplier: np.ndarray,
    size: np.ndarray,
    schedule: np.ndarray,
    *,
    budget: float | Sequence[float],
    metric: str,
    layers: Sequence[str] | None = None,
    cut_step: int | None = None,
    after_cut: tuple[Sequence[float], Sequence[float]] | None = None,
    end: int | None = None,
) -> Figure:
    """A budgeted fit's controller: the prior's strength multiplier (top, log scale) and
    the posterior's size against its target (bottom), per controller update.

    :param steps: optimizer step of each update.
    :param multiplier: the multiplier ``m`` at each update, ``(updates,)`` or
        ``(updates, layers)`` for a per-layer budget.
    :param size: the posterior's size at each update, a fraction of the dense network
        (same shape).
    :param schedule: the target the update steered to (same shape).
    :param budget: the budget's fraction (one per layer for a per-layer budget).
    :param metric: what the size counts (``"weights"``, ``"units"``, ``"params"``,
        ``"flops"``).
    :param layers: the layers of a per-layer budget (one line each), or ``None``.
    :param cut_step: the step at which the posterior was cut to the budget.
    :param after_cut: ``(multipliers, sizes)`` from the cut to ``end`` (one per line).
    :param end: the fit's last step (the held values after the cut are drawn up to it).
    """
    x = np.asarray(steps, dtype=float)
    m = np.asarray(multiplier, dtype=float).reshape(len(x), -1)
    s = 100 * np.asarray(size, dtype=float).reshape(len(x), -1)
    t = 100 * np.asarray(schedule, dtype=float).reshape(len(x), -1)
    b = 100 * np.atleast_1d(np.asarray(budget, dtype=float))
    names = ["posterior"] if layers is None else [_label(n) for n in layers]
    colors = [AFTER] if layers is None else [f"C{i % 10}" for i in range(len(names))]
    fig = _figure(7.5, 6.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.25])
    dots = {"marker": "o", "ms": 3} if len(x) <= 30 else {}
    # every line is labelled by what it shows (the legend is built from proxies below)
    for j, (name, c) in enumerate(zip(names, colors, strict=True)):
        top.plot(x, m[:, j], color=c, lw=1.4, label=f"multiplier: {name}", **dots)
        bottom.plot(x, s[:, j], color=c, lw=1.4, label=f"size: {name}", **dots)
        bottom.plot(x, t[:, j], color=c, lw=1.0, ls="--", label=f"target: {name}")
        bottom.axhline(b[j], color=c, lw=1.0, ls=":", label=f"budget: {name}")
    top.axhline(1.0, color="black", lw=0.8, ls=(0, (1, 3)), label="configured strength")
    if cut_step is not None:
        for ax in (top, bottom):
            ax.axvline(cut_step, color=CUT, lw=1.3, ls="-.", label="cut")
    if cut_step is not None and after_cut is not None:
        xs = [cut_step, max(end, cut_step)] if end is not None else [cut_step]
        for j, (name, c) in enumerate(zip(names, colors, strict=True)):
            for ax, v, what in (
                (top, after_cut[0][j], "multiplier"),
                (bottom, 100 * after_cut[1][j], "size"),
            ):
                ax.plot(
                    xs,
                    [v] * len(xs),
                    color=c,
                    lw=2.2,
                    alpha=0.55,
                    marker="*",
                    markevery=[0],
                    ms=10,
                    label=f"{what} after the cut: {name}",
                )
    top.set_yscale("log")
    _readable_log_ticks(top, [*m.ravel(), 1.0, *(after_cut[0] if after_cut else [])])
    top.set_ylabel("multiplier m (log scale)")
    top.set_title(
        "Prior strength multiplier m (dotted: 1, the prior as configured)"
        + ("\none line per layer, colours as below" if layers is not None else "")
    )
    if layers is None:
        bottom.set_ylabel(f"size (% of the dense\nnetwork's {BUDGET_OF.get(metric, metric)})")
    else:
        bottom.set_ylabel("size (% of the layer's\nunits as built)")
    bottom.set_xlabel("optimizer step")
    bottom.set_title(
        "Posterior's size: measured (solid), scheduled target (dashed), budget (dotted)"
    )
    bottom.set_ylim(0, max(105.0, float(np.nanmax(s)) * 1.05))
    for ax in (top, bottom):
        ax.grid(alpha=0.3, which="both")
    handles = [
        Line2D([], [], color=c, lw=1.4, label=f"{name} (budget {bj:.3g}%)")
        for name, c, bj in zip(names if layers is not None else ["size"], colors, b, strict=True)
    ]
    if cut_step is not None:
        handles.append(
            Line2D([], [], color=CUT, lw=1.3, ls="-.", label=f"cut to the budget (step {cut_step})")
        )
    if cut_step is not None and after_cut is not None:
        handles.append(
            Line2D(
                [],
                [],
                color="grey",
                lw=2.2,
                alpha=0.55,
                marker="*",
                ms=10,
                label="after the cut: held to the end",
            )
        )
    _legend(bottom, len(handles), handles=handles)
    return fig


def _readable_log_ticks(ax, values: Sequence[float]) -> None:
    """Plain-number labels on a log y axis, never crowded: linear-spaced ticks within a
    factor of 3, 1-2-5 ticks up to three decades, decades beyond; minor ticks unlabelled."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not v.size:
        return
    lo, hi = float(v.min()), float(v.max())
    ratio = hi / lo
    if ratio < 3:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, min_n_ticks=3))
    else:
        ax.yaxis.set_major_locator(
            LogLocator(base=10, subs=(1.0, 2.0, 5.0) if ratio < 1e3 else (1.0,))
        )
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    pad = min(max(ratio**0.06, 1.02), 2.0)
    bottom, top = lo / pad, hi * pad
    if ratio >= 3:  # reach out to a labelled 1-2-5 tick at either end when it is close
        ticks = [
            f * 10.0**e
            for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
            for f in (1, 2, 5)
        ]
        below = max(t for t in ticks if t <= lo * 1.0001)
        above = min(t for t in ticks if t >= hi / 1.0001)
        if lo / below < 1.6:
            bottom = min(bottom, below / 1.02)
        if above / hi < 1.6:
            top = max(top, above * 1.02)
    ax.set_ylim(bottom, top)


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def inclusion_histograms(
    probs: Mapping[str, np.ndarray],
    element: Mapping[str, str],
    removed: Mapping[str, int] | None = None,
) -> Figure:
    """Histogram of posterior inclusion probabilities, one panel per layer.

    :param probs: ``{layer: inclusion probabilities}`` (any shape, flattened).
    :param element: ``{layer: "units" | "weights" | "block"}``, what one probability is about.
    :param removed: ``{layer: units removed during training}`` (not in ``probs``), for the titles.
    """
    rows, cols = _grid(len(probs))
    fig = _figure(3.4 * cols + 0.6, 2.7 * rows + 0.7)
    bins = np.linspace(0.0, 1.0, 21)
    for i, (layer, p) in enumerate(probs.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        p = np.asarray(p, dtype=float).ravel()
        ax.hist(p, bins=bins, color=AFTER, edgecolor="white")
        kept = int((p >= 0.5).sum())
        gone = (removed or {}).get(layer, 0)
        ax.set_title(
            f"{_label(layer)}: {kept}/{p.size} {element.get(layer, 'units')} p≥0.5"
            + (f"\n({gone} more removed in training)" if gone else ""),
            fontsize="medium",
        )
        ax.set_xlim(0, 1)
        ax.set_xlabel("inclusion probability")
        ax.set_ylabel(f"number of {element.get(layer, 'units')}")
        if p.size > 200:
            ax.set_yscale("log")
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Posterior inclusion probability per layer")
    return fig


def shrinkage_profile(norms: Mapping[str, np.ndarray], scales: Mapping[str, np.ndarray]) -> Figure:
    """HALO's shrinkage: each unit's weight norm against its posterior shrinkage scale λ.

    :param norms: ``{layer: L2 norm of each unit's weights}`` (posterior mean).
    :param scales: ``{layer: shrinkage scale λ of each unit}`` (posterior mean; per-weight
        scales averaged over the unit's weights).
    """
    fig = _figure()
    ax = fig.add_subplot()
    all_lam, all_w = [], []
    for layer, w in norms.items():
        lam = np.asarray(scales[layer], dtype=float).ravel()
        w = np.asarray(w, dtype=float).ravel()
        ax.scatter(lam, w, s=14, alpha=0.75, label=_label(layer))
        all_lam.append(lam)
        all_w.append(w)
    _log_if_wide(ax, np.concatenate(all_lam), "x")
    _log_if_wide(ax, np.concatenate(all_w), "y")
    ax.set_xlabel("shrinkage scale λ (posterior mean, per unit)")
    ax.set_ylabel("unit weight L2 norm (posterior mean)")
    ax.set_title("HALO shrinkage profile: small λ pulls a unit's weights to 0")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(norms))
    return fig


def accuracy_vs_kept(
    kept: Sequence[float],
    accuracy: Sequence[float],
    *,
    predicted: Sequence[float] | None = None,
    chosen: float | None = None,
    default: tuple[float, float] | None = None,
    split: str = "test",
    base: str = "prunable elements",
) -> Figure:
    """Accuracy of the collapsed network against the fraction of prunable elements kept.

    :param kept: kept fractions in ``[0, 1]``.
    :param accuracy: accuracy in ``[0, 1]`` at each kept fraction.
    :param predicted: optional Monte-Carlo estimate of the same curve.
    :param chosen: the kept fraction of the collapse used for the extracted network.
    :param default: ``(kept fraction, accuracy)`` of the prior's default collapse.
    :param split: the data split the accuracy was measured on.
    :param base: what the fractions are fractions of (x-axis label).
    """
    fig = _figure()
    ax = fig.add_subplot()
    order = np.argsort(np.asarray(kept, dtype=float))
    x = 100 * np.asarray(kept, dtype=float)[order]
    ax.plot(
        x,
        100 * np.asarray(accuracy, dtype=float)[order],
        marker="o",
        ms=4,
        color=AFTER,
        label="collapsed network",
    )
    if predicted is not None:
        ax.plot(
            x,
            100 * np.asarray(predicted, dtype=float)[order],
            ls="--",
            marker=".",
            color="#d9822b",
            label="Monte-Carlo prediction",
        )
    if chosen is not None:
        ax.axvline(
            100 * chosen,
            color="#c23030",
            ls=":",
            lw=1.5,
            label=f"chosen collapse: {100 * chosen:.1f}% kept",
        )
    if default is not None:
        ax.plot(
            100 * default[0],
            100 * default[1],
            "*",
            ms=12,
            color="#d9822b",
            label=f"default collapse: {100 * default[0]:.1f}% kept",
        )
    ax.set_xlabel(f"kept fraction of {base} (%)")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_title(f"Accuracy vs sparsity ({split} split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return fig


def reliability_diagram(
    lower: Sequence[float],
    upper: Sequence[float],
    confidence: Sequence[float],
    accuracy: Sequence[float],
    count: Sequence[int],
    *,
    ece: float | None = None,
) -> Figure:
    """Reliability diagram: accuracy against confidence per bin, with the diagonal.

    Empty bins are not drawn; the lower panel shows how many predictions fall in each bin.

    :param lower: lower edge of each confidence bin, in ``[0, 1]``.
    :param upper: upper edge of each bin.
    :param confidence: mean confidence of the predictions in each bin.
    :param accuracy: accuracy of the predictions in each bin.
    :param count: number of predictions in each bin.
    :param ece: expected calibration error, shown in the title.
    """
    lo, hi = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    conf, acc = np.asarray(confidence, dtype=float), np.asarray(accuracy, dtype=float)
    n = np.asarray(count, dtype=float)
    full = n > 0
    fig = _figure(6.4, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    width = 100 * (hi - lo)
    top.bar(
        100 * lo[full],
        100 * acc[full],
        width=width[full],
        align="edge",
        color=AFTER,
        edgecolor="white",
        label="accuracy in bin",
    )
    top.bar(
        100 * lo[full],
        100 * (conf[full] - acc[full]),
        bottom=100 * acc[full],
        width=width[full],
        align="edge",
        color="none",
        edgecolor="#c23030",
        hatch="//",
        lw=0.8,
        label="gap to mean confidence",
    )
    top.plot([0, 100], [0, 100], ls="--", color="black", lw=1, label="perfect calibration")
    top.set_ylabel("accuracy (%)")
    top.set_xlim(100 * lo.min(), 100)
    top.set_ylim(0, 102)
    top.legend(fontsize="small", loc="upper left")
    title = "Reliability diagram (posterior predictive)"
    top.set_title(title + (f", ECE = {100 * ece:.2f}%" if ece is not None else ""))
    top.grid(alpha=0.3)
    bottom.bar(100 * lo, n, width=width, align="edge", color=BEFORE, edgecolor="white")
    bottom.set_xlabel("confidence of the predicted class (%)")
    bottom.set_ylabel("predictions")
    _log_if_wide(bottom, n, "y")
    return fig


def _bar_labels(ax, bars, values: Sequence[float], fmt: str) -> None:
    for b, v in zip(bars, values, strict=True):
        ax.annotate(
            format(v, fmt),
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize="x-small",
            xytext=(0, 1),
            textcoords="offset points",
        )


def layer_widths(
    layers: Sequence[str], before: Sequence[int], after: Sequence[int], *, element: str = "units"
) -> Figure:
    """Per-layer width of the original and of the extracted network.

    :param layers: layer names.
    :param before: units (or other elements) per layer in the original network.
    :param after: the same in the extracted network.
    :param element: what is counted (axis label).
    """
    fig = _figure(max(6.0, 0.75 * len(layers) + 2.5), 4.4)
    ax = fig.add_subplot()
    x = np.arange(len(layers))
    w = 0.4
    b1 = ax.bar(x - w / 2, before, w, color=BEFORE, label="original")
    b2 = ax.bar(x + w / 2, after, w, color=AFTER, label="extracted")
    if len(layers) <= 16:
        _bar_labels(ax, b1, before, "d")
        _bar_labels(ax, b2, after, "d")
    ax.set_xticks(
        x,
        [_label(n) for n in layers],
        rotation=0 if len(layers) <= 6 else 60,
        ha="center" if len(layers) <= 6 else "right",
    )
    positive = [v for v in [*before, *after] if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{element} (count)")
    ax.set_title(f"{element.capitalize()} per layer: original vs extracted")
    ax.legend(fontsize="small")
    ax.margins(y=0.15)
    return fig


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def cost_before_after(panels: Sequence[tuple[str, str, float, float]]) -> Figure:
    """Side-by-side bars of the original and the extracted network's costs.

    :param panels: ``(what, unit, before, after)`` per panel, e.g.
        ``("parameters", "count", 431080, 12345)``.
    """
    fig = _figure(max(6.0, 2.6 * len(panels)), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, unit, before, after) in zip(axes, panels, strict=True):
        bars = ax.bar(["original", "extracted"], [before, after], color=[BEFORE, AFTER])
        for b, v in zip(bars, [before, after], strict=True):
            ax.annotate(
                _si(v),
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize="small",
                xytext=(0, 1),
                textcoords="offset points",
            )
        ratio = f"extracted: {100 * after / before:.1f}% of original" if before > 0 else ""
        ax.set_title(f"{title}\n{ratio}", fontsize="medium")
        ax.set_ylabel(unit)
        ax.margins(y=0.18)
        ax.yaxis.set_major_formatter(lambda v, _: _si(v))
    fig.suptitle("Cost of the original vs the extracted network")
    return fig
