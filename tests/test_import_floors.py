"""The import order is the pipeline order: a module never imports a higher floor.

``errors`` imports nothing and every floor raises its errors. ``metrics`` sits on the
ground floor although the pipeline reads it late: it counts the parameters, FLOPs and
latency of plain ``nn.Module``s, imports nothing of bayesprune but its errors, and the gate priors'
complexity-aware prices need its FLOP counter.
"""

from __future__ import annotations

import ast
from pathlib import Path

FLOORS = [
    (
        "errors",
        "atomic",
        "budget",
        "data",
        "zoo",
        "distributions",
        "sites",
        "blocks",
        "heads",
        "metrics",
        "dependency",
    ),
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


def test_no_modules_import_each_other():
    """No import cycle among bayesprune's modules, of two modules or more, counting imports
    inside functions. ``from package import submodule`` is an import of the submodule."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        targets = imported(path)
        for node in ast.walk(ast.parse(path.read_text())):
            subs = [f"{getattr(node, 'module', '')}.{a.name}" for a in getattr(node, "names", [])]
            if isinstance(node, ast.ImportFrom) and all(s in files for s in subs):
                if node.module in targets:  # imported() lists each ImportFrom once
                    targets.remove(node.module)
                targets += subs
        graph[name] = {t for t in targets if t in files and t != name}
    cycles, state, path = [], {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                cycles.append(" -> ".join([*path[path.index(other) :], other]))
            elif other not in state:
                visit(other)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)
