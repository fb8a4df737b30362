"""A walk over torchvision's classification models: gate, cut half the units, compare.

For every model of ``torchvision.models.list_models(module=torchvision.models)`` with at
most 150 M parameters (random weights, ``num_classes=10``; BatchNorm statistics set from the
input and random affine parameters, :func:`calibrate`, so the outputs are not vanishingly
small), on one small random input:

1. ``sparsify(net, UnitGates(), example_input=x)`` with the default layers: the layers whose
   units cannot be removed exactly are left out (:mod:`bayesprune.nn.removable`), by reason;
2. keep-sets keeping a random half of the gates of every gated layer (a tied gate keeps its
   units in every group; an attention layer keeps half of its heads);
3. ``extract(..., check=False)`` and ``masked_copy``, timed, and the largest
   ``|extracted - masked|`` on the input, in float32 and -- the same weights -- in float64:
   the deeper random networks amplify float32 rounding to 1e-4 of their output.

Status per model: ``output-equal`` (float64, within ``1e-9 max|masked|``), ``refused at
sparsify`` (a :class:`~bayesprune.errors.BayesPruneError`, with its message), ``DIFFERS``
or ``extract failed`` (both bugs).

    python benchmarks/torchvision_walk.py [NAME ...] [--max-params 150e6] [--seed 0]

Writes benchmarks/results/torchvision_walk.json (or ``--out``) and prints a Markdown table.
A full walk takes about 5 minutes on 2 CPU cores (4.5 min on 2026-11-30). The
representative subset runs in the test suite (``tests/pruning/test_torchvision_walk.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
import torchvision

from bayesprune import sparsify
from bayesprune.errors import BayesPruneError
from bayesprune.heads import is_head_layer
from bayesprune.priors import UnitGates
from bayesprune.priors.group_ties import tied_units, tile_of
from bayesprune.pruning import KeepSet, extract, masked_copy

RESULTS = Path(__file__).parent / "results" / "torchvision_walk.json"


def input_size(name: str, size: int = 64) -> dict[str, Any]:
    """The input side (and builder arguments) of a small valid input for model ``name``:
    ``size`` where the model allows, ViTs built for a 2x2 grid of patches, MaxViT at 224
    (it needs multiples of 224), Inception v3 at 96 (at least 75), AlexNet at 64 (at least
    63)."""
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        return {"size": 2 * patch, "kwargs": {"image_size": 2 * patch}}
    if name.startswith("maxvit"):
        return {"size": 224, "kwargs": {}}
    if name.startswith("inception"):
        return {"size": max(size, 96), "kwargs": {}}
    if name == "alexnet":
        return {"size": max(size, 64), "kwargs": {}}
    return {"size": size, "kwargs": {}}


def build(name: str, seed: int = 0, size: int = 64) -> tuple[torch.nn.Module, torch.Tensor]:
    """Model ``name`` with random weights (a weight initialised to zero drawn from
    ``N(0, 0.02²)`` instead, so that the output depends on the units), ``num_classes=10``,
    eval mode, and its input."""
    spec = input_size(name, size)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet/Inception init warnings
        net = torchvision.models.get_model(name, weights=None, num_classes=10, **spec["kwargs"])
    with torch.no_grad():  # a zero-initialised head (ViT) would make every output 0
        for p in net.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 0.02)
    net.eval()
    x = torch.randn(2, 3, spec["size"], spec["size"], generator=torch.Generator().manual_seed(seed))
    calibrate(net, x, seed)
    return net, x


@torch.no_grad()
def calibrate(net: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> None:
    """Give every BatchNorm the statistics of its input on a random batch shaped like ``x``
    and random affine parameters, in eval mode: with the default statistics (mean 0, variance 1) the outputs
    of a deep random network fade to 1e-20 (EfficientNet), and a comparison of outputs
    says nothing."""
    g = torch.Generator().manual_seed(seed)

    def hook(bn: torch.nn.Module, inputs: tuple) -> None:
        h = inputs[0].transpose(0, 1).flatten(1)
        var = h.var(1)
        bn.running_mean.copy_(h.mean(1))
        # a channel (nearly) constant on the batch must not be scaled up: that makes the
        # network chaotic once units are cut, its output dominated by amplified rounding
        bn.running_var.copy_(var + 0.5 * var.mean() + 1e-5)
        if bn.affine:
            bn.weight.copy_(0.5 + 0.5 * torch.rand(bn.weight.shape, generator=g))
            bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=g))

    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    handles = [m.register_forward_pre_hook(hook) for m in norms if m.running_mean is not None]
    try:  # on a batch of 8 like x (not x itself: the statistics of 2 examples are too tight)
        net(torch.randn(8, *x.shape[1:], generator=g))
    finally:
        for h in handles:
            h.remove()


def half_keep(net: Any, seed: int = 0) -> dict[str, KeepSet]:
    """A random half of the gates of every gated layer of a BayesianNet, as keep-sets."""
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for gate in net.gates:
        layer = net.module.get_submodule(gate.layer)
        k = gate.shape[0]
        chosen = torch.sort(torch.randperm(k, generator=g)[: max(1, k // 2)]).values
        tile = tile_of(gate)
        units = tied_units(chosen, period=k, tile=tile) if tile > 1 else chosen
        n = k if is_head_layer(layer) else int(layer.weight.shape[0])
        keep[gate.layer] = KeepSet(units=units, n_units=n)
    return keep


class _Skipped(logging.Handler):
    """Collects sparsify's "left out" log lines: ``{reason: [layers]}``."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.by_reason: dict[str, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.args and len(record.args) == 4:
            _, _, kind, names = record.args
            self.by_reason.setdefault(str(kind), []).extend(names)


def walk_one(name: str, seed: int = 0, size: int = 64) -> dict[str, Any]:
    """Gate, cut and compare model ``name`` (see the module docstring) on inputs of side
    ``size`` where the model allows."""
    net, x = build(name, seed, size)
    row: dict[str, Any] = {
        "model": name,
        "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
        "input": list(x.shape),
    }
    handler = _Skipped()
    logger = logging.getLogger("bayesprune.nn.sparsify")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    t0 = time.perf_counter()
    try:
        bn = sparsify(net, UnitGates(), example_input=x)
    except BayesPruneError as e:
        row.update(status="refused at sparsify", message=str(e))
        return row
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        row["sparsify_s"] = round(time.perf_counter() - t0, 2)
        row["skipped"] = handler.by_reason
    row["gated"] = len(bn.layer_names)
    keep = half_keep(bn, seed)
    try:
        t1 = time.perf_counter()
        small = extract(net, keep, example_input=x, check=False)
        row["extract_s"] = round(time.perf_counter() - t1, 2)
        masked = masked_copy(net, keep, example_input=x)
        with torch.no_grad():  # float32, as the network runs; then the same weights in float64
            row["max_abs_diff_float32"] = float((masked(x) - small(x)).abs().max())
            a, b = masked.double()(x.double()), small.double()(x.double())
        diff = float((a - b).abs().max())
        tol = 1e-9 * float(a.abs().max())  # relative: the outputs may be small
        row["max_abs_diff"] = diff
        row["max_abs_masked"] = float(a.abs().max())
        row["rel_diff"] = diff / max(row["max_abs_masked"], 1e-300)
        row["params_kept"] = round(
            sum(p.numel() for p in small.parameters()) / max(1, row["params_m"] * 1e6), 3
        )
        row["status"] = "output-equal" if diff <= tol else "DIFFERS"
    except Exception as e:  # a crash in the surgery is a finding, not the end of the walk
        row.update(status="extract failed", message=f"{type(e).__name__}: {e}")
        row["traceback"] = traceback.format_exc(limit=6)
    return row


def models() -> list[str]:
    """Every classification model of torchvision (``main`` leaves out the largest)."""
    return list(torchvision.models.list_models(module=torchvision.models))


def too_large(name: str, max_params: float) -> int | None:
    """The parameter count of model ``name`` if above ``max_params`` (built on the meta
    device where the builder allows: nothing allocated)."""
    spec = input_size(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                net = torchvision.models.get_model(
                    name, weights=None, num_classes=10, **spec["kwargs"]
                )
        except NotImplementedError:  # a builder that computes with tensors (RegNet)
            net = torchvision.models.get_model(name, weights=None, num_classes=10, **spec["kwargs"])
    n = sum(p.numel() for p in net.parameters())
    return n if n > max_params else None


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | M params | gated | skipped (reason: n) | sparsify s | extract s | "
        "max abs diff (relative) | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") == "skipped (too large)":
            continue
        skipped = "; ".join(f"{k}: {len(v)}" for k, v in r.get("skipped", {}).items())
        diff = f"{r['max_abs_diff']:.1e} ({r['rel_diff']:.0e})" if "max_abs_diff" in r else ""
        status = r["status"]
        if "message" in r and status != "output-equal":
            status += f": {r['message'][:160]}"
        lines.append(
            f"| {r['model']} | {r['params_m']} | {r.get('gated', '')} | {skipped} | "
            f"{r.get('sparsify_s', '')} | {r.get('extract_s', '')} | {diff} | {status} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="models (default: all)")
    ap.add_argument("--max-params", type=float, default=150e6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    names = args.names or models()
    rows = []
    for name in names:
        n = too_large(name, args.max_params)
        if n is not None:
            rows.append(
                {"model": name, "params_m": round(n / 1e6, 1), "status": "skipped (too large)"}
            )
            print(f"{name}: {n / 1e6:.0f} M parameters, left out", flush=True)
            continue
        t0 = time.perf_counter()
        row = walk_one(name, args.seed)
        row["total_s"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        print(
            f"{name}: {row['status']} gated={row.get('gated')} "
            f"sparsify={row.get('sparsify_s')}s extract={row.get('extract_s')}s "
            f"diff={row.get('max_abs_diff')} {row.get('message', '')[:200]}",
            flush=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"rows": rows, "torch": torch.__version__, "torchvision": torchvision.__version__},
                indent=1,
            )
        )
    print(table(rows))


if __name__ == "__main__":
    main()
