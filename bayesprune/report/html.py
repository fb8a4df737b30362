"""``report.html``: one self-contained file (inline CSS, figures as base64 ``data:`` URIs, no
script, no external reference), readable offline.

>>> from bayesprune.report.content import Content
>>> page = render_html(Content(title="A <run>", numbers=[("Accuracy", "91.00%", "test")]))
>>> "<title>A &lt;run&gt;</title>" in page, "http" in page
(True, False)
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from bayesprune.report.content import INCLUSION_HEAD, Content, FigureEntry, inclusion_rows

__all__ = ["render_html"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #1d2733; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #1f6fb2; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; color: #1f6fb2; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .95em; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #f3f6f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td { max-width: 44em; overflow-wrap: anywhere; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #e1e4e8; }
figcaption { font-size: .9em; color: #4a5560; margin-top: .3em; }
.skipped { color: #8a5300; background: #fff8e6; border-left: 4px solid #f0b400;
           padding: .4em .8em; }
.note { color: #4a5560; }
"""


def _table(head: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = "".join(
            f'<td class="num">{escape(str(v))}</td>'
            if i in numeric
            else f"<td>{escape(str(v))}</td>"
            for i, v in enumerate(r)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _figure(f: FigureEntry) -> str:
    if f.path is None:
        return f'<p class="skipped"><b>{escape(f.title)}</b>: not drawn, {escape(f.skipped or "")}.</p>'
    data = base64.b64encode(f.path.read_bytes()).decode("ascii")
    return (
        f'<figure id="fig-{escape(f.name)}"><img src="data:image/png;base64,{data}" '
        f'alt="{escape(f.title)}"><figcaption><b>{escape(f.title)}.</b> {escape(f.caption)}'
        "</figcaption></figure>"
    )


def render_html(c: Content) -> str:
    """The whole page for ``c`` (figure files are read and embedded)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(c.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(c.title)}</h1>",
        "<h2>Key numbers</h2>",
    ]
    if c.numbers:
        parts.append(_table(["quantity", "value", "note"], [list(r) for r in c.numbers], {1}))
    parts += [f'<p class="note">{escape(n)}</p>' for n in c.notes]
    if c.settings:
        parts += [
            "<h2>Where the numbers come from</h2>",
            _table(["setting", "value"], [list(r) for r in c.settings]),
        ]
    if c.layers:
        parts += [
            "<h2>Units per layer: original → extracted</h2>",
            _table(
                ["layer", "original", "extracted", "kept"],
                [
                    [n or "(root)", b, a, f"{100 * a / b:.1f}%" if b else "-"]
                    for n, b, a in c.layers
                ],
                {1, 2, 3},
            ),
        ]
    if c.cost:
        parts += [
            "<h2>Cost: original → extracted</h2>",
            _table(
                ["quantity", "original", "extracted", "extracted / original"],
                [list(r) for r in c.cost],
                {1, 2, 3},
            ),
        ]
    parts.append("<h2>Figures</h2>")
    parts += [_figure(f) for f in c.figures]
    if c.inclusion:
        parts += [
            "<h2>Inclusion probabilities per layer</h2>",
            _table(INCLUSION_HEAD, inclusion_rows(c), {1, 2, 3, 4, 5, 6}),
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)
