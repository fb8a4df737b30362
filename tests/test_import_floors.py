"""The import order is the pipeline order: a module never imports a higher floor.

``errors`` imports nothing and every floor raises its errors. ``metrics`` sits on the
ground floor although the pipeline reads it late: it counts the parameters, FLOPs and
latency of plain ``nn.Module``s, imports nothing of bayesprune, and the gate priors'
complexity-aware prices need its FLOP counter.
"""

from __future__ import annotations

import ast
from pathlib import Path

FLOORS = [
    ("errors", "data", "zoo", "distributions", "sites", "blocks", "metrics"),
    ("priors",),
    ("nn",),
    ("guides",),
    ("inference",),
    ("pruning",),
    ("export",),
    ("methods", "spaces", "diagnostics"),
    ("report",),
    ("cli",),
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}
PACKAGE = Path(__file__).parents[1] / "bayesprune"


def imported(path: Path) -> list[str]:
    """Every ``bayesprune.*`` module a file imports, at the top or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return [m for m in out if m.startswith("bayesprune.")]


def test_every_subpackage_has_a_floor():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    tops -= {"__init__", "__main__", "__pycache__", "py"}
    assert tops <= FLOOR.keys(), tops - FLOOR.keys()


def test_no_module_imports_a_higher_floor():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if top in ("__init__", "__main__"):
            continue
        for module in imported(path):
            other = module.split(".")[1]
            if FLOOR.get(other, -1) > FLOOR[top]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not wrong, "\n".join(wrong)
