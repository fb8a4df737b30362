"""``report.md``: the report's summary in Markdown, linking the PNG figures next to it.

>>> from bayesprune.report.content import INCLUSION_HEAD, Content, inclusion_rows, FigureEntry
>>> c = Content(title="run", figures=[FigureEntry("cost", "Cost", skipped="no data")])
>>> print(render_markdown(c).splitlines()[0])
# run
"""

from __future__ import annotations

from typing import Any

from bayesprune.report.content import INCLUSION_HEAD, Content, inclusion_rows

__all__ = ["render_markdown"]


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list[Any]], right: set[int] = frozenset()) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(head))]
    return [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(_cell(v) for v in r) + " |" for r in rows),
        "",
    ]


def render_markdown(c: Content) -> str:
    """The Markdown text for ``c``; figures are linked by file name (same folder)."""
    lines = [f"# {c.title}", "", "## Key numbers", ""]
    if c.numbers:
        lines += _table(["quantity", "value", "note"], [list(r) for r in c.numbers], {1})
    for n in c.notes:
        lines += [n, ""]
    if c.settings:
        lines += ["## Where the numbers come from", ""]
        lines += _table(["setting", "value"], [list(r) for r in c.settings])
    if c.layers:
        lines += ["## Units per layer: original → extracted", ""]
        lines += _table(
            ["layer", "original", "extracted", "kept"],
            [[n or "(root)", b, a, f"{100 * a / b:.1f}%" if b else "-"] for n, b, a in c.layers],
            {1, 2, 3},
        )
    if c.cost:
        lines += ["## Cost: original → extracted", ""]
        lines += _table(
            ["quantity", "original", "extracted", "extracted / original"],
            [list(r) for r in c.cost],
            {1, 2, 3},
        )
    lines += ["## Figures", ""]
    for f in c.figures:
        if f.path is None:
            lines += [f"- **{f.title}**: not drawn, {f.skipped}.", ""]
        else:
            lines += [f"### {f.title}", "", f"![{f.title}]({f.path.name})", "", f.caption, ""]
    if c.inclusion:
        lines += ["## Inclusion probabilities per layer", ""]
        lines += _table(INCLUSION_HEAD, inclusion_rows(c), {1, 2, 3, 4, 5, 6})
    return "\n".join(lines).rstrip() + "\n"
