"""The report's key numbers as formatted table rows.

>>> key_number_rows({"accuracy_point": 0.9123, "split": "test"}, None)
[('Accuracy, posterior point estimate', '91.23%', 'test split, guide.point()')]
>>> cost_rows({"params": 100, "flops": 400, "latency": []},
...           {"params": 25, "flops": 100, "latency": []})[0]
('parameters (stored)', '100', '25', '25.0%')
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from bayesprune.report.plots import _label

__all__ = [
    "budget_rows",
    "cost_rows",
    "explanations",
    "khat_verdict",
    "key_number_rows",
    "setting_rows",
]


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def khat_verdict(k: float) -> str:
    """This run's reading of a PSIS k̂ (Vehtari et al. 2015; Yao et al. 2018 for variational fits).

    >>> khat_verdict(0.3)
    'good (k̂ < 0.5)'
    """
    if k < 0.5:
        return "good (k̂ < 0.5)"
    if k < 0.7:
        return "acceptable (0.5 ≤ k̂ < 0.7)"
    return "poor (k̂ ≥ 0.7): do not read q's summaries as posterior summaries"


def key_number_rows(attrs: Mapping[str, Any], chosen: float | None) -> list[tuple[str, str, str]]:
    """``(quantity, value, note)`` rows from the InferenceData's posterior attrs (those present)."""
    split = str(attrs.get("split", "?"))
    draws = attrs.get("num_samples")
    over = f"model average over {draws} draws from q" if draws is not None else "model average"
    rows: list[tuple[str, str, str]] = []

    def add(key: str, name: str, fmt, note: str) -> None:
        v = _num(attrs.get(key))
        if v is not None:
            rows.append((name, fmt(v), note))

    add(
        "accuracy_point",
        "Accuracy, posterior point estimate",
        _pct,
        f"{split} split, guide.point()",
    )
    add("accuracy_predictive", "Accuracy, posterior predictive", _pct, f"{split} split, {over}")
    add("nll_point", "NLL, posterior point estimate", lambda v: f"{v:.4f}", "nats per example")
    add("nll_predictive", "NLL, posterior predictive", lambda v: f"{v:.4f}", "nats per example")
    add("ece_point", "ECE, posterior point estimate", _pct, "expected calibration error, 15 bins")
    add("ece_predictive", "ECE, posterior predictive", _pct, "expected calibration error, 15 bins")
    if "psis_khat" in attrs:
        k = _num(attrs.get("psis_khat"))
        if k is None:
            why = str(attrs.get("psis_khat_note") or "").strip().removeprefix("undefined: ")
            rows.append(("PSIS k̂", "undefined", why))
        else:
            rows.append(("PSIS k̂", f"{k:.2f}", khat_verdict(k)))
    if chosen is not None:
        rows.append(
            (
                "Kept fraction",
                _pct(chosen),
                "of the original network's prunable elements, by the collapse used",
            )
        )
    return rows


def _fractions(v: Any, layers: list[str] | None) -> str:
    """A size as a percentage, or ``layer pct, ...`` for a per-layer one."""
    if layers is None or isinstance(v, (int, float)):
        return _pct(float(v))
    return ", ".join(f"{_label(n)} {_pct(float(x))}" for n, x in zip(layers, v, strict=True))


def budget_rows(b: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Key-number rows of a budgeted fit, from :func:`bayesprune.report.collect.budget_history`:
    the budget, the posterior's size when it was cut to it, and the size at the end.

    >>> b = {"metric": "flops", "target": 0.5, "layers": None, "final": {"size": 0.48,
    ...      "phase": "cut"}, "cut": {"step": 90, "posterior": 0.7, "final": 0.48, "cut": 5}}
    >>> [r[:2] for r in budget_rows(b)]
    [('Budget', 'flops 50.00%'), ('Budget: size at the cut', '70.00%'), ('Budget: final size', '48.00%')]
    """
    metric, layers = str(b["metric"]), b.get("layers")
    target = b["target"]
    value = (
        f"{metric} {_pct(float(target))}"
        if layers is None
        else f"{metric}: " + _fractions([target[n] for n in layers], layers)
    )
    of = {
        "weights": "prunable weights kept nonzero",
        "units": "gated units kept" + (", per layer" if layers is not None else ""),
        "params": "parameters of the whole network",
        "flops": "MACs per example of the whole network",
    }.get(metric, metric)
    rows = [
        ("Budget", value, f"fit(budget=...): at most this fraction of the dense network's {of}")
    ]
    cut = b.get("cut")
    if cut is not None:
        over = " of all gated units" if layers is not None else ""
        rows.append(
            (
                "Budget: size at the cut",
                _pct(float(cut["posterior"])),
                f"step {int(cut['step'])}: the size{over} the posterior's own rule kept; the "
                f"cut removed {int(cut['cut'])} more elements, to {_pct(float(cut['final']))}",
            )
        )
    final = b.get("final") or {}
    if final.get("size") is not None:
        held = final.get("phase") == "cut"
        rows.append(
            (
                "Budget: final size",
                _fractions(final["size"], layers),
                "end of the fit; "
                + (
                    "held since the cut"
                    if held
                    else "the controller's last measure: the posterior was not cut during "
                    "the fit (collapse(budget=...) cuts it)"
                ),
            )
        )
    return rows


def setting_rows(attrs: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(setting, value)`` rows saying where the numbers come from (guide, prior, draws...).

    >>> setting_rows({"guide": "map", "prior": {"name": "halo"}})
    [('guide', 'map'), ('prior', '{"name": "halo"}')]
    """
    rows = []
    for key, name in [
        ("guide", "guide"),
        ("prior", "prior"),
        ("weight_uncertainty", "weight uncertainty"),
        ("draws_from", "draws from"),
        ("inclusion_kind", "inclusion probabilities"),
        ("split", "diagnosed split"),
        ("n_examples", "examples diagnosed"),
        ("num_samples", "draws"),
    ]:
        v = attrs.get(key)
        if v is not None:
            rows.append((name, json.dumps(v) if isinstance(v, Mapping) else str(v)))
    return rows


def explanations(attrs: Mapping[str, Any]) -> list[str]:
    """Sentences that explain the key numbers (what PSIS k̂ means, what it refers to)."""
    out = []
    meaning = str(attrs.get("psis_khat_meaning") or "").strip()
    scope = str(attrs.get("psis_khat_scope") or "").strip()
    if meaning:
        out.append(f"PSIS k̂: {meaning}" + (f" Scope: {scope}." if scope else ""))
    return out


def _where(stats: Mapping[str, Any]) -> str:
    device = str(stats.get("device", "cpu"))
    if device.startswith("cpu"):
        threads = stats.get("threads")
        return f"CPU ({threads} threads)" if threads else "CPU"
    return device


def _count(v: float) -> str:
    return f"{int(v):,}"


def cost_rows(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> list[tuple[str, str, str, str]]:
    """``(quantity, before, after, after as % of before)`` from two
    :func:`bayesprune.metrics.summarize` results."""

    def row(name: str, b: float, a: float, fmt) -> tuple[str, str, str, str]:
        return name, fmt(b), fmt(a), (f"{100 * a / b:.1f}%" if b else "-")

    rows = [
        row("parameters (stored)", before["params"], after["params"], _count),
        row("FLOPs per example (dense)", before["flops"], after["flops"], _count),
    ]
    for lb, la in zip(before["latency"], after["latency"], strict=False):
        rows.append(
            row(
                f"{_where(la)} latency, batch {la['batch_size']} (median)",
                lb["median"],
                la["median"],
                lambda s: f"{1e3 * s:.3f} ms",
            )
        )
    return rows
