"""Parameter counts of a plain ``nn.Module``: stored, and nonzero.

``params`` counts every stored parameter element; ``nonzeros`` counts those
that are not exactly zero, so an unstructured mask shows up as a lower density
even though the tensor still has its dense shape. Tied parameters (one tensor
reachable under two names) are counted once, at the first module that owns
them. Buffers (e.g. BatchNorm running statistics) are not parameters and are
not counted.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))
>>> with torch.no_grad():
...     _ = net[2].weight.zero_()
>>> c = count_parameters(net)
>>> c["params"], c["nonzeros"], [row["name"] for row in c["layers"]]
(21, 15, ['0', '2'])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bayesprune.errors import UnsupportedError
from bayesprune.metrics.flops import count_flops

__all__ = ["count_parameters", "format_table", "layer_table"]


def count_parameters(module: nn.Module) -> dict[str, Any]:
    """Count the parameters and the nonzero parameters of ``module``.

    :param module: any ``nn.Module``.
    :returns: a dict with ``params`` (stored elements), ``nonzeros``,
        ``density`` (``nonzeros / params``; ``1.0`` for a module without
        parameters) and ``layers``: one row per module that owns parameters
        directly, in ``named_modules`` order, each a dict with ``name``
        (``""`` for the root), ``type``, ``params``, ``nonzeros``, ``density``
        and ``shapes`` (parameter name to shape list).

    >>> from torch import nn
    >>> c = count_parameters(nn.Conv2d(3, 8, 3))
    >>> c["params"], c["layers"][0]["shapes"]
    (224, {'weight': [8, 3, 3, 3], 'bias': [8]})
    """
    if not isinstance(module, nn.Module):
        raise UnsupportedError(
            f"count_parameters expects an nn.Module, got {type(module).__name__}"
        )
    modules = dict(module.named_modules())
    owned: dict[str, dict[str, torch.Tensor]] = {}
    # named_parameters() yields every tensor once (tied ones under their first name).
    for full_name, param in module.named_parameters():
        owner, _, leaf = full_name.rpartition(".")
        owned.setdefault(owner, {})[leaf] = param

    rows = []
    for name in modules:
        params = owned.get(name)
        if not params:
            continue
        n = sum(p.numel() for p in params.values())
        nz = sum(int(torch.count_nonzero(p.detach())) for p in params.values())
        rows.append(
            {
                "name": name,
                "type": type(modules[name]).__name__,
                "params": n,
                "nonzeros": nz,
                "density": nz / n if n else 1.0,
                "shapes": {k: list(p.shape) for k, p in params.items()},
            }
        )
    total = sum(r["params"] for r in rows)
    nonzeros = sum(r["nonzeros"] for r in rows)
    return {
        "params": total,
        "nonzeros": nonzeros,
        "density": nonzeros / total if total else 1.0,
        "layers": rows,
    }


def layer_table(
    module: nn.Module, example_input: Any = None, *, batch_size: int | None = None
) -> list[dict[str, Any]]:
    """One flat row per layer, ready to print or write as CSV.

    Rows come from :func:`count_parameters`; if ``example_input`` is given, the
    per-example ``macs``, ``sparse_macs`` and ``calls`` from
    :func:`bayesprune.metrics.count_flops` are merged in (``0`` for layers
    whose work is not counted), and layers that own no parameters but do
    counted work are appended.

    :param module: any ``nn.Module``.
    :param example_input: optional input for one forward pass (a tensor or a
        tuple of positional arguments).
    :param batch_size: passed on to ``count_flops``.
    :returns: a list of dicts with keys ``name``, ``type``, ``params``,
        ``nonzeros``, ``density`` and, with an input, ``macs``,
        ``sparse_macs``, ``calls``.

    >>> from torch import nn
    >>> rows = layer_table(nn.Sequential(nn.Linear(4, 3)), torch.zeros(1, 4))
    >>> rows[0]["name"], rows[0]["params"], rows[0]["macs"]
    ('0', 15, 12)
    """
    counts = count_parameters(module)
    rows = [{k: v for k, v in r.items() if k != "shapes"} for r in counts["layers"]]
    if example_input is None:
        return rows
    flops = {
        r["name"]: r for r in count_flops(module, example_input, batch_size=batch_size)["layers"]
    }
    for row in rows:
        f = flops.pop(row["name"], None)
        row["macs"] = f["macs"] if f else 0
        row["sparse_macs"] = f["sparse_macs"] if f else 0
        row["calls"] = f["calls"] if f else 0
    for name, f in flops.items():
        rows.append(
            {
                "name": name,
                "type": f["type"],
                "params": 0,
                "nonzeros": 0,
                "density": 1.0,
                "macs": f["macs"],
                "sparse_macs": f["sparse_macs"],
                "calls": f["calls"],
            }
        )
    return rows


def format_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Render rows (e.g. from :func:`layer_table`) as a fixed-width text table.

    :param rows: dicts sharing (at least) the keys in ``columns``.
    :param columns: the columns to show, in order; default: the first row's keys.
    :returns: the table as one string, a header line, a rule, one line per row.

    >>> print(format_table([{"name": "fc", "params": 15}]))
    name  params
    ----  ------
    fc        15
    """
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    if not columns:
        return ""
    cells = [[_cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), int | float) for r in rows) and bool(rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        out = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule] + [line(c) for c in cells])


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
