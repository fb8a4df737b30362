"""Uniform vs posterior-induced pruning space on LeNet-5 / Fashion-MNIST, at equal FLOPs.

1. Fit unit gates on LeNet-5 briefly (the settings of ``models/gates-lenet5.toml``:
   ``UnitGates(gamma=8, cost="mixed", init_prob=0.9)``, MAP guide, gate lr 1e-2, cosine
   schedule, but ``--epochs`` epochs and no removal of dead units, so every unit is
   still in the network and θ is the only thing that decides).
2. The posterior-induced space: every unit kept with probability θ. Its FLOPs range --
   the 5th to 95th percentile of 4000 unconstrained draws, widened to at least
   ``--min-width`` -- becomes the FLOPs constraint of *both* spaces.
3. The uniform space: every per-layer unit count (conv1, conv2, fc1) with equal
   probability among those in that FLOPs range (exact: the 500,000 count vectors are
   enumerated), units chosen by the L1 norm of the fitted weights (the guide's point
   estimate, which every subnetwork of both spaces inherits).
4. ``--n`` subnetworks of each, extracted from the fitted network (inherited weights),
   scored on the validation split, fine-tuned ``--finetune-epochs`` epoch(s) on
   ``--finetune-examples`` training examples (the same for all) with
   ``bayesprune.methods.train``, scored again.

Prints a table (median / best error, EDF at a few error levels, FLOPs/params ratios, He &
Xiao's ratio finding), writes ``benchmarks/results/pruning_space.json`` and
``docs/img/pruning_space_edf.png``.

    python benchmarks/pruning_space.py [--epochs 2] [--n 30] [--finetune-epochs 1]
        [--finetune-examples 4096] [--threads 2]
    python benchmarks/pruning_space.py --replot   # redraw the PNG from the JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import bayesprune as bp
from bayesprune.data import fashion_mnist
from bayesprune.guides import MAP
from bayesprune.priors import UnitGates
from bayesprune.spaces import (
    Population,
    PosteriorSpace,
    PruningSpace,
    dominance,
    evaluate,
    plot_edfs,
    ratio_finding,
)
from bayesprune.zoo import build

ROOT = Path(__file__).resolve().parents[1]
LEVELS = (0.12, 0.14, 0.16, 0.20, 0.30)


def summary(pop, errors: np.ndarray) -> dict:
    return {
        "median_error": float(np.median(errors)),
        "best_error": float(errors.min()),
        "edf": {
            f"{e:.2f}": float(v) for e, v in zip(LEVELS, pop.edf(np.array(LEVELS)), strict=True)
        }
        if errors is pop.errors
        else None,
        "flops_frac_range": [float(pop.flops_frac.min()), float(pop.flops_frac.max())],
        "ratio_median": float(np.median(pop.ratio)),
    }


def from_records(records: list[dict]) -> list[Population]:
    """The populations of a results file (to redraw the figure without rerunning)."""
    out = []
    for name in dict.fromkeys(r["space"] for r in records):
        rows = [r for r in records if r["space"] == name]
        keys = list(rows[0])
        layers = tuple(keys[keys.index("space") + 1 : keys.index("error")])

        def col(k: str, rows: list[dict] = rows) -> np.ndarray:
            return np.array([r[k] for r in rows], dtype=np.float64)

        out.append(
            Population(
                name,
                layers,
                np.array([[r[n] for n in layers] for r in rows], dtype=np.int64),
                col("error"),
                col("error_inherited"),
                col("flops"),
                col("params"),
                float(rows[0]["flops"] / rows[0]["flops_frac"]),
                float(rows[0]["params"] / rows[0]["params_frac"]),
            )
        )
    return out


def figure(pops: list[Population], flops_range: tuple[float, float], args) -> Path:
    title = (
        f"LeNet-5 / Fashion-MNIST, FLOPs {100 * flops_range[0]:.1f}-{100 * flops_range[1]:.1f}% "
        f"of dense, {args.n} subnetworks each, {args.finetune_epochs} fine-tune epoch(s)"
    )
    best = min(float(p.errors.min()) for p in pops)
    xlim = (best - 0.01, best + 0.08)  # the outliers (up to 70%) would hide the region that matters
    return plot_edfs(pops, args.png, top=0.2, inherited=True, xlim=xlim, title=title)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-examples", type=int, default=4096)
    ap.add_argument("--min-width", type=float, default=0.06)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/pruning_space.json"))
    ap.add_argument("--png", default=str(ROOT / "docs/img/pruning_space_edf.png"))
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG from --out")
    args = ap.parse_args()
    if args.replot:
        saved = json.loads(Path(args.out).read_text())
        for k in ("n", "finetune_epochs"):
            setattr(args, k, saved["settings"][k])
        print(f"wrote {figure(from_records(saved['records']), saved['flops_range'], args)}")
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    data = fashion_mnist(seed=args.seed)
    net = bp.sparsify(build("lenet5"), UnitGates(gamma=8.0, cost="mixed", init_prob=0.9))
    guide = MAP(net)
    t0 = time.perf_counter()
    result = bp.fit(
        net,
        data,
        guide,
        epochs=args.epochs,
        role_lr={"gate": 1e-2},
        schedule="cosine",
        remove_dead=False,
        seed=args.seed,
        progress=False,
    )
    fit_s = time.perf_counter() - t0
    print(f"gated fit: {args.epochs} epochs in {fit_s:.1f}s")

    post = PosteriorSpace(net, guide)
    theta = {n: t for n, t in post.theta.items()}
    theta_stats = {
        n: {
            "units": int(t.size),
            "theta_0": int((t <= 0).sum()),
            "theta_1": int((t >= 1).sum()),
            "theta_between": int(((t > 0) & (t < 1)).sum()),
            "expected_kept": float(t.sum()),
        }
        for n, t in theta.items()
    }
    print("gate probabilities θ per layer:", json.dumps(theta_stats))
    masks = post.sample_masks(4000, seed=args.seed)
    counts = np.stack([m.sum(1) for m in masks.values()], axis=1)
    frac = post.costs(counts)["flops_frac"]
    lo, hi = np.percentile(frac, [5, 95])
    mid = 0.5 * (lo + hi)
    half = max(0.5 * (hi - lo), 0.5 * args.min_width)
    flops_range = (float(max(mid - half, 0.0)), float(min(mid + half, 1.0)))
    print(
        f"posterior FLOPs fraction: 5-95% [{lo:.4f}, {hi:.4f}] -> both spaces at "
        f"flops={tuple(round(v, 4) for v in flops_range)}"
    )

    post = PosteriorSpace(net, guide, flops=flops_range)
    uni = PruningSpace(net, flops=flops_range, units="l1", guide=guide)
    print(f"uniform space: {len(uni.feasible())} of {uni.size} width vectors in the FLOPs range")
    opts = dict(
        finetune_epochs=args.finetune_epochs,
        finetune_examples=args.finetune_examples,
        seed=args.seed,
    )
    pops = {}
    for name, space in (("posterior", post), ("uniform", uni)):
        t0 = time.perf_counter()
        pops[name] = evaluate(net, space.sample(args.n, seed=args.seed), data, name=name, **opts)
        print(f"{name}: {args.n} subnetworks evaluated in {time.perf_counter() - t0:.1f}s")

    rows = {}
    for name, pop in pops.items():
        rows[name] = {
            "after_finetune": summary(pop, pop.errors),
            "inherited": {
                "median_error": float(np.median(pop.errors_inherited)),
                "best_error": float(pop.errors_inherited.min()),
            },
            "ratio_finding": ratio_finding(pop, top=0.2, seed=args.seed),
            "acceptance": post.acceptance if name == "posterior" else None,
        }
    dom = dominance(pops["posterior"].errors, pops["uniform"].errors)
    dom_inh = dominance(pops["posterior"].errors_inherited, pops["uniform"].errors_inherited)
    both = Population(
        "both",
        pops["uniform"].layers,
        np.concatenate([p.counts for p in pops.values()]),
        np.concatenate([p.errors for p in pops.values()]),
        np.concatenate([p.errors_inherited for p in pops.values()]),
        np.concatenate([p.flops for p in pops.values()]),
        np.concatenate([p.params for p in pops.values()]),
        pops["uniform"].dense_flops,
        pops["uniform"].dense_params,
    )
    pooled = ratio_finding(both, top=0.2, seed=args.seed)

    print()
    hdr = "| space | median err | best err | median err, no FT | " + " | ".join(
        f"EDF@{100 * e:.0f}%" for e in LEVELS
    )
    print(hdr + " | FLOPs/params median (best 20%) | best-20% IQR/all IQR (p) |")
    print("|" + "---|" * (5 + len(LEVELS)) + "---|")
    for name, r in rows.items():
        a, f = r["after_finetune"], r["ratio_finding"]
        edf_cells = " | ".join(f"{v:.2f}" for v in a["edf"].values())
        print(
            f"| {name} | {100 * a['median_error']:.2f}% | {100 * a['best_error']:.2f}% | "
            f"{100 * r['inherited']['median_error']:.2f}% | {edf_cells} | "
            f"{a['ratio_median']:.2f} ({f['ratio_best_median']:.2f}) | "
            f"{f['concentration']:.2f} ({f['p_value']:.3f}) |"
        )
    print()
    print(
        f"posterior EDF dominates uniform after fine-tune: {dom['dominates']} (max deficit "
        f"{dom['max_deficit']:.3f}, area {dom['area']:.4f}); with inherited weights: "
        f"{dom_inh['dominates']} (max deficit {dom_inh['max_deficit']:.3f}, area {dom_inh['area']:.4f})"
    )
    print(
        f"pooled ratio finding (best 20% of both): concentration {pooled['concentration']:.2f}, "
        f"p={pooled['p_value']:.3f}, Spearman(error, ratio)={pooled['spearman_error_ratio']:.2f}, "
        f"winners' ratio {pooled['ratio_best_range']}"
    )
    png = figure(list(pops.values()), flops_range, args)
    total_s = time.perf_counter() - t_start
    out = {
        "settings": vars(args) | {"levels": LEVELS},
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "fit_seconds": fit_s,
        "fit_last_epoch": {
            k: v
            for k, v in (result.history or [{}])[-1].items()
            if isinstance(v, int | float | str)
        },
        "theta": theta_stats,
        "flops_range": flops_range,
        "uniform_feasible": int(len(uni.feasible())),
        "spaces": rows,
        "dominance_after_finetune": dom,
        "dominance_inherited": dom_inh,
        "ratio_finding_pooled": pooled,
        "records": [r for p in pops.values() for r in p.records()],
        "png": str(Path(png).relative_to(ROOT)) if Path(png).is_relative_to(ROOT) else str(png),
        "total_seconds": total_s,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out} and {png} ({total_s:.0f}s in all)")


if __name__ == "__main__":
    main()
