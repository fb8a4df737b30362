"""Name a budget, get that network: one budgeted fit per budget against grids of strengths.

Fashion-MNIST (in memory), Adam lr 1e-3, batch 128, the same epochs for every fit:

- ``halo``: HALO (MAP, per weight, scales at lr 1e-2) with ``budget=Budget(weights=b)`` for
  b in 5 / 2 / 1 %, collapsed with ``collapse(budget=...)`` -- against the grid of fixed ξ
  in ``results/halo_vs_magnitude.json`` (its "chosen on val" column) and the dense net;
- ``gates``: unit gates (``cost="flops"``, gate lr 1e-2, cosine schedule, dead units cut
  out during the fit) with ``budget=Budget(flops=b)`` for b in 50 / 25 / 10 %, against a
  grid of fixed γ run here with the same settings; the best grid accuracy at FLOPs within
  the budget is the bar. Also: how collapsed the posterior is (gate probabilities exactly
  0 or 1) and the accuracy of the stochastic model (predictive mean over 20 draws from q)
  next to the extracted network's;
- ``robust``: gates at one FLOPs budget, 3 seeds × widths 1× and 2×, the budget given in
  FLOPs of the 1× network (so both widths aim at the same absolute size).

Test data is only reported; nothing is chosen on it. Wall times are of one process; on a
shared machine read them as rough.

    python benchmarks/budgets.py [--nets lenet300 lenet5] [--parts halo gates robust]
        [--epochs 10] [--grid 3 10 30 100 300] [--flops-budgets 0.5 0.25 0.1]
        [--place pre-activation|post-activation] [--no-dense] [--out PATH]

Writes benchmarks/results/budgets.json (``--out``) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import bayesprune as bp
from bayesprune import Budget
from bayesprune.data import fashion_mnist
from bayesprune.diagnostics.draws import run_draws
from bayesprune.guides import MAP
from bayesprune.methods import accuracy, train
from bayesprune.metrics import count_flops
from bayesprune.priors import HALO, UnitGates
from bayesprune.zoo import build

RESULTS = Path(__file__).parent / "results"
HALO_BUDGETS = (0.05, 0.02, 0.01)
FLOPS_BUDGETS = (0.5, 0.25, 0.1)


def macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    return int(count_flops(module, x[:1])["macs"])


def dense_run(name: str, data, epochs: int, seed: int, schedule, width: float = 1.0) -> dict:
    torch.manual_seed(seed)
    net = build(name, width=width)
    t0 = time.perf_counter()
    train(net, data, epochs=epochs, seed=seed, schedule=schedule)
    return {
        "test": accuracy(net, data.test.x, data.test.y),
        "val": accuracy(net, data.val.x, data.val.y),
        "seconds": time.perf_counter() - t0,
        "macs": macs(net, data.test.x),
    }


def gate_stats(net, guide, small, data) -> dict:
    """How collapsed the gates are, and the stochastic model's accuracy next to the
    extracted network's."""
    thetas = torch.cat([guide.gate_theta(s).detach().flatten() for s in net.gates])
    alive = thetas[thetas > 0]
    draws = run_draws(net, guide, data.test.x, data.test.y, 20)
    return {
        "vertex": float(((alive == 0) | (alive == 1)).float().mean()),
        "near_vertex": float((torch.minimum(alive, 1 - alive) < 0.01).float().mean()),
        "stochastic_test": float((draws.probs.argmax(-1) == data.test.y).float().mean()),
    }


def extracted(net, guide, data, budget, dense_macs: int) -> dict:
    """Collapse (to ``budget``, or by the prior's threshold when ``None``), extract, score."""
    keep = bp.collapse(net, guide) if budget is None else bp.collapse(net, guide, budget=budget)
    small = bp.extract(net, keep).eval()
    n_macs = macs(small, data.test.x)
    out = {
        "test": accuracy(small, data.test.x, data.test.y),
        "val": accuracy(small, data.val.x, data.val.y),
        "macs": n_macs,
        "macs_fraction": n_macs / dense_macs,
        "units": {n: int(ks.n_kept) for n, ks in keep.items() if ks.units is not None},
        "small": small,
    }
    if keep.budget is not None:
        out |= {
            "posterior_size": keep.budget.posterior,
            "final_size": keep.budget.final,
            "cut": keep.budget.cut,
        }
    return out


def halo_run(name: str, data, epochs: int, seed: int, frac: float, dense_macs: int) -> dict:
    torch.manual_seed(seed)
    net = bp.sparsify(build(name), HALO(xi=3e-5, psi=3e-5))
    guide = MAP(net)
    budget = Budget(weights=frac)
    t0 = time.perf_counter()
    res = bp.fit(
        net, data, guide, epochs=epochs, seed=seed, role_lr={"scale": 1e-2},
        budget=budget, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    out = extracted(net, guide, data, budget, dense_macs)
    out.pop("small")
    return out | {"seconds": seconds, "trace": trace(res.history)}


def gated_run(
    name: str,
    data,
    epochs: int,
    seed: int,
    dense_macs: int,
    *,
    gamma: float = 30.0,
    frac: float | None = None,
    width: float = 1.0,
    stats: bool = True,
    place: str = "pre-activation",
) -> dict:
    torch.manual_seed(seed)
    net = bp.sparsify(build(name, width=width), UnitGates(gamma, cost="flops", place=place))
    guide = MAP(net)
    budget = Budget(flops=frac) if frac is not None else None
    t0 = time.perf_counter()
    res = bp.fit(
        net, data, guide, epochs=epochs, seed=seed, role_lr={"gate": 1e-2},
        schedule="cosine", remove_dead=True, budget=budget, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    out = extracted(net, guide, data, budget, dense_macs)
    small = out.pop("small")
    if stats:
        out |= gate_stats(net, guide, small, data)
    return out | {
        "seconds": seconds,
        "epoch_seconds": [h["seconds"] for h in res.history],
        "trace": trace(res.history),
    }


def trace(history: list[dict]) -> list:
    """The multiplier's trajectory, every 10th update."""
    rows = [r for h in history for r in h.get("budget_trace", [])]
    return rows[::10]


def units_str(units: dict) -> str:
    return "-".join(str(v) for v in units.values())


def halo_table(name: str, r: dict, grid: dict | None) -> list[str]:
    lines = [
        f"{name}: HALO, one budgeted fit per budget (dense {100 * r['dense']['test']:.2f}%)",
        "",
        "| weights kept | budgeted fit: test | val | posterior's own size | "
        "grid, chosen on val (halo_vs_magnitude.json) | Δ vs grid | Δ vs dense | fit time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, h in r["halo"].items():
        g = (grid or {}).get(key)
        gtxt = f"{100 * g['test']:.2f}% ({g['label']})" if g else "--"
        dg = f"{100 * (h['test'] - g['test']):+.2f}" if g else "--"
        lines.append(
            f"| {100 * float(key):g}% | {100 * h['test']:.2f}% | {100 * h['val']:.2f}% | "
            f"{100 * h['posterior_size']:.2f}% | {gtxt} | {dg} | "
            f"{100 * (h['test'] - r['dense']['test']):+.2f} | {h['seconds']:.0f} s |"
        )
    return lines


def gates_table(name: str, r: dict) -> list[str]:
    d = r["dense"]
    lines = [
        f"{name}: unit gates, FLOPs budgets (dense {100 * d['test']:.2f}%, "
        f"{d['macs']:,} MACs, {d['seconds']:.0f} s)",
        "",
        "| FLOPs budget | FLOPs kept | units | test | best grid γ within budget | Δ vs grid | "
        "Δ vs dense | θ at 0/1 | stochastic test | fit / dense time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    grid = r.get("grid", {})
    for key, g in r["gates"].items():
        frac = float(key)
        within = [(v["test"], k, v) for k, v in grid.items() if v["macs_fraction"] <= frac]
        best = max(within, default=None, key=lambda t: t[0])
        btxt = (
            f"{100 * best[0]:.2f}% (γ={best[1]}, {100 * best[2]['macs_fraction']:.1f}%)"
            if best
            else "none within"
        )
        dgrid = f"{100 * (g['test'] - best[0]):+.2f}" if best else "--"
        lines.append(
            f"| {100 * frac:g}% | {100 * g['macs_fraction']:.1f}% | {units_str(g['units'])} | "
            f"{100 * g['test']:.2f}% | {btxt} | {dgrid} | "
            f"{100 * (g['test'] - d['test']):+.2f} | {100 * g['vertex']:.0f}% | "
            f"{100 * g['stochastic_test']:.2f}% | {g['seconds'] / d['seconds']:.2f} |"
        )
    if grid:
        lines += ["", "grid (fixed γ, same settings):", ""]
        lines += ["| γ | FLOPs kept | units | test |", "|---|---|---|---|"]
        for k, v in grid.items():
            lines.append(
                f"| {k} | {100 * v['macs_fraction']:.1f}% | {units_str(v['units'])} | "
                f"{100 * v['test']:.2f}% |"
            )
    return lines


def robust_table(name: str, r: dict) -> list[str]:
    lines = [
        f"{name}: robustness at {100 * r['frac']:g}% of the 1× network's FLOPs",
        "",
        "| width | seeds | FLOPs kept (of 1×) | units per seed | test mean ± sd |",
        "|---|---|---|---|---|",
    ]
    for w, runs in r["runs"].items():
        accs = torch.tensor([x["test"] for x in runs])
        kept = ", ".join(f"{100 * x['macs'] / r['dense_macs']:.2f}%" for x in runs)
        lines.append(
            f"| {w}× | {len(runs)} | {kept} | {', '.join(units_str(x['units']) for x in runs)} "
            f"| {100 * accs.mean():.2f}% ± {100 * accs.std():.2f} |"
        )
    return lines


def halo_grid(name: str) -> dict | None:
    """Per budget, the grid fit of ``halo_vs_magnitude.py`` with the best validation
    accuracy (its "chosen on val" column): ``{budget: {"test", "label"}}``."""
    path = RESULTS / "halo_vs_magnitude.json"
    if not path.exists():
        return None
    saved = next((r for r in json.loads(path.read_text())["results"] if r["net"] == name), None)
    if saved is None:
        return None
    out = {}
    for frac in saved["budgets"]:
        fits = [
            (v[str(frac)]["val"], label, v[str(frac)]["test"]) for label, v in saved["halo"].items()
        ]
        val, label, test = max(fits)
        out[str(float(frac))] = {"test": test, "label": label}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["lenet300", "lenet5"])
    ap.add_argument("--parts", nargs="+", default=["halo", "gates", "robust"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--grid", nargs="+", type=float, default=[3.0, 10.0, 30.0, 100.0, 300.0],
        help="fixed γ to compare with (0: none)",
    )  # fmt: skip
    ap.add_argument("--flops-budgets", nargs="+", type=float, default=list(FLOPS_BUDGETS))
    ap.add_argument(
        "--place", default="pre-activation", help="where the unit gates act (UnitGates(place=))"
    )
    ap.add_argument("--no-dense", action="store_true", help="reuse the dense run in --out")
    ap.add_argument("--robust-net", default="lenet300")
    ap.add_argument("--robust-budget", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(RESULTS / "budgets.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = fashion_mnist()
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results["settings"] = {"epochs": args.epochs, "seed": args.seed, "grid": args.grid}

    def save() -> None:
        out_path.write_text(json.dumps(results, indent=1))

    for name in args.nets:
        r = results.setdefault(name, {})
        if not ({"halo", "gates"} & set(args.parts)):
            break
        if not (args.no_dense and "dense" in r):  # --no-dense: the out file's dense run
            r["dense"] = dense_run(name, data, args.epochs, args.seed, "cosine")
        dense_macs = r["dense"]["macs"]
        save()
        if "halo" in args.parts:
            r["halo"] = {}
            for frac in HALO_BUDGETS:
                r["halo"][str(frac)] = halo_run(
                    name, data, args.epochs, args.seed, frac, dense_macs
                )
                save()
            print("\n".join(halo_table(name, r, halo_grid(name))), "\n", flush=True)
        if "gates" in args.parts:
            r["place"] = args.place
            r["grid"] = {}
            for gamma in args.grid if args.grid != [0.0] else []:
                r["grid"][f"{gamma:g}"] = gated_run(
                    name, data, args.epochs, args.seed, dense_macs, gamma=gamma, stats=False,
                    place=args.place,
                )  # fmt: skip
                save()
            r["gates"] = {}
            for frac in args.flops_budgets:
                r["gates"][str(frac)] = gated_run(
                    name, data, args.epochs, args.seed, dense_macs, frac=frac, place=args.place
                )
                save()
            print("\n".join(gates_table(name, r)), "\n", flush=True)
    if "robust" in args.parts:
        name = args.robust_net
        dense_macs = macs(build(name), data.test.x)
        rob = {"frac": args.robust_budget, "dense_macs": dense_macs, "runs": {}}
        for width in (1.0, 2.0):
            wide_macs = macs(build(name, width=width), data.test.x)
            frac = args.robust_budget * dense_macs / wide_macs  # the same absolute FLOPs
            rob["runs"][f"{width:g}"] = [
                gated_run(
                    name, data, args.epochs, seed, wide_macs, frac=frac, width=width, stats=False
                )  # fmt: skip
                for seed in range(3)
            ]
            results[f"robust_{name}"] = rob
            save()
        print("\n".join(robust_table(name, rob)), "\n", flush=True)
    save()


if __name__ == "__main__":
    main()
