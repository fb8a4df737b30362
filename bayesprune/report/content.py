"""What a report says, independent of how it is written (HTML or Markdown).

>>> c = Content(title="run")
>>> c.figures.append(FigureEntry("elbo", "Training objective", skipped="no ELBO trace"))
>>> c.figures[0].path is None
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["INCLUSION_HEAD", "Content", "FigureEntry", "inclusion_rows"]


@dataclass
class FigureEntry:
    """One figure of the report: written to ``path``, or ``skipped`` with the reason."""

    name: str
    title: str
    caption: str = ""
    path: Path | None = None
    skipped: str | None = None


@dataclass
class Content:
    """Everything a report shows.

    :ivar title: the report's title.
    :ivar numbers: ``(quantity, value, note)`` rows of key numbers.
    :ivar settings: ``(setting, value)`` rows: where the numbers come from.
    :ivar layers: ``(layer, units before, units after)`` rows.
    :ivar cost: ``(quantity, before, after, after/before)`` rows, values already formatted.
    :ivar inclusion: rows of :func:`bayesprune.report.collect.inclusion_table`.
    :ivar figures: every figure, drawn or skipped, in report order.
    :ivar notes: sentences shown under the key numbers (what they mean, what was not
        measured and why).
    """

    title: str
    numbers: list[tuple[str, str, str]] = field(default_factory=list)
    settings: list[tuple[str, str]] = field(default_factory=list)
    layers: list[tuple[str, int, int]] = field(default_factory=list)
    cost: list[tuple[str, str, str, str]] = field(default_factory=list)
    inclusion: list[dict[str, Any]] = field(default_factory=list)
    figures: list[FigureEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


#: columns of the per-layer inclusion table (numbers in columns 1-6)
INCLUSION_HEAD = [
    "layer",
    "elements",
    "mean p",
    "p ≥ 0.5",
    "p ≥ 0.9",
    "p < 0.1",
    "kept by collapse",
]


def inclusion_rows(c: Content) -> list[list[Any]]:
    """The per-layer inclusion table's rows, shared by the HTML and Markdown renderers."""
    return [
        [
            r["layer"] or "(root)",
            f"{r['n']} {r['element']}",
            f"{r['mean']:.3f}",
            r["ge_0.5"],
            r["ge_0.9"],
            r["lt_0.1"],
            "-" if r["kept"] is None else r["kept"],
        ]
        for r in c.inclusion
    ]
