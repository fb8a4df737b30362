"""Bernoulli unit gates with the flattening hyper-prior on Fashion-MNIST.

For LeNet-300-100 and LeNet-5-Caffe: a dense net trained with plain PyTorch, then
gated fits (UnitGates, MAP weights under a Gaussian prior, dead units removed during
training) at a few prices γ. For each: units kept per layer, test accuracy of the
extracted network vs the dense one, FLOPs, CPU latency of the extracted network vs the
dense one (interleaved, batch 1 and 256), time per epoch over the fit, and the whole fit's
wall time relative to dense training for the same epochs. Then robustness: several
seeds × two starting widths (1× and 2×) at one price.

    python benchmarks/gates_fashion.py [--nets lenet300 lenet5] [--epochs 10]
        [--configs 30:uniform 300:uniform 8:mixed] [--schedule cosine] [--seeds 5]
        [--robust 30:uniform]

Writes benchmarks/results/gates_fashion.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import bayesprune as bp
from bayesprune.data import fashion_mnist
from bayesprune.guides import MAP
from bayesprune.methods import accuracy, train
from bayesprune.metrics import compare_latency, count_flops
from bayesprune.priors import UnitGates
from bayesprune.zoo import build


def dense_run(name: str, data, epochs: int, seed: int, schedule, width: float = 1.0) -> dict:
    torch.manual_seed(seed)
    net = build(name, width=width)
    t0 = time.perf_counter()
    hist = train(net, data, epochs=epochs, seed=seed, schedule=schedule)
    return {
        "net": net,
        "test": accuracy(net, data.test.x, data.test.y),
        "seconds": time.perf_counter() - t0,
        "epoch_seconds": [h["seconds"] for h in hist],
    }


def gated_run(
    name: str, data, epochs: int, seed: int, gamma: float, cost: str, schedule, width: float = 1.0
) -> dict:
    torch.manual_seed(seed)
    net = bp.sparsify(build(name, width=width), UnitGates(gamma, cost=cost))
    guide = MAP(net)
    t0 = time.perf_counter()
    res = bp.fit(
        net,
        data,
        guide,
        epochs=epochs,
        seed=seed,
        role_lr={"gate": 1e-2},
        schedule=schedule,
        remove_dead=True,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    keep = bp.collapse(net, guide)
    small = bp.extract(net, keep).eval()
    thetas = torch.cat([v for k, v in guide.point().items() if k.endswith("#probs")])
    units = {n: int(ks.n_kept) for n, ks in keep.items()}
    return {
        "small": small,
        "units": units,
        "test": accuracy(small, data.test.x, data.test.y),
        "val": accuracy(small, data.val.x, data.val.y),
        "seconds": seconds,
        "epoch_seconds": [h["seconds"] for h in res.history],
        "units_per_epoch": [h.get("units") for h in res.history],
        "vertex_fraction": float(((thetas == 0) | (thetas == 1)).float().mean()),
        "near_vertex_fraction": float((torch.minimum(thetas, 1 - thetas) < 0.01).float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["lenet300", "lenet5"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["30:uniform", "300:uniform", "8:mixed"],
        help="gate prices as GAMMA:COST (cost: uniform, flops, params, mixed)",
    )
    ap.add_argument("--schedule", default="cosine", help="lr schedule for every fit (none|cosine)")
    ap.add_argument(
        "--seeds", type=int, default=5, help="seeds for the robustness study (0 = skip)"
    )
    ap.add_argument("--robust", default="30:uniform", help="GAMMA:COST of the robustness study")
    ap.add_argument("--robust-nets", nargs="+", default=None, help="default: --nets")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "gates_fashion.json"
    )
    args = ap.parse_args()
    schedule = None if args.schedule in ("none", "None") else args.schedule
    configs = [(float(c.split(":")[0]), c.split(":")[1]) for c in args.configs]
    robust_gamma, robust_cost = float(args.robust.split(":")[0]), args.robust.split(":")[1]
    data = fashion_mnist()
    x1, x256 = data.test.x[:1], data.test.x[:256]
    report: dict = {"args": vars(args) | {"out": str(args.out)}, "nets": {}}
    for name in args.nets:
        dense = dense_run(name, data, args.epochs, 0, schedule)
        dflops = count_flops(dense["net"], x1)["flops"]
        rows = []
        for gamma, cost in configs:
            g = gated_run(name, data, args.epochs, 0, gamma, cost, schedule)
            lat256 = compare_latency(dense["net"].eval(), g["small"], x256, repeats=20)
            lat1 = compare_latency(dense["net"].eval(), g["small"], x1, repeats=50)
            rows.append(
                {
                    "gamma": gamma,
                    "cost": cost,
                    **{k: v for k, v in g.items() if k != "small"},
                    "flops": count_flops(g["small"], x1)["flops"],
                    "speedup_256": lat256["speedup"],
                    "speedup_1": lat1["speedup"],
                    "fit_vs_dense_time": g["seconds"] / dense["seconds"],
                }
            )
        report["nets"][name] = {
            "dense": {k: v for k, v in dense.items() if k != "net"} | {"flops": dflops},
            "gated": rows,
        }
        print(
            f"\n{name}: dense {100 * dense['test']:.2f}% test, {dflops:,} FLOPs, {dense['seconds']:.0f} s for {args.epochs} epochs"
        )
        print(
            "| γ | cost | units kept | test acc | Δ vs dense | FLOPs | CPU speed-up b=256 / b=1 | epoch time first → last | fit / dense time | θ at 0 or 1: exactly / within 0.01 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['gamma']:g} | {r['cost']} | {'-'.join(str(v) for v in r['units'].values())} | "
                f"{100 * r['test']:.2f}% | {100 * (r['test'] - dense['test']):+.2f} | {r['flops']:,} | "
                f"{r['speedup_256']:.1f}× / {r['speedup_1']:.1f}× | "
                f"{r['epoch_seconds'][0]:.1f} s → {r['epoch_seconds'][-1]:.1f} s | {r['fit_vs_dense_time']:.2f} | "
                f"{100 * r['vertex_fraction']:.0f}% / {100 * r['near_vertex_fraction']:.0f}% |"
            )
    robust_nets = args.robust_nets or args.nets
    if args.seeds > 0:
        report["robustness"] = {}
        print(
            f"\nrobustness: γ={robust_gamma:g} ({robust_cost}), {args.seeds} seeds × widths 1× and 2×"
        )
        print("| net | width | units kept per seed | test acc mean ± sd |")
        print("|---|---|---|---|")
        for name in robust_nets:
            for width in (1.0, 2.0):
                runs = [
                    gated_run(
                        name, data, args.epochs, s, robust_gamma, robust_cost, schedule, width
                    )
                    for s in range(args.seeds)
                ]
                accs = [r["test"] for r in runs]
                report["robustness"][f"{name}@{width:g}"] = [
                    {k: v for k, v in r.items() if k != "small"} for r in runs
                ]
                units = ", ".join("-".join(str(v) for v in r["units"].values()) for r in runs)
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                print(
                    f"| {name} | {width:g}× | {units} | {100 * statistics.mean(accs):.2f}% ± {100 * sd:.2f} |"
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
