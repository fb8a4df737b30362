"""Per-epoch cost of a HALO fit relative to plain PyTorch training of the same dense net.

Everything is measured in this one process, interleaved round by round (plain, MAP,
mean-field, plain, ...) on the same in-memory Fashion-MNIST tensors, batch 128,
Adam (fused) lr 1e-3; the figure is the ratio of median epoch times.

    python benchmarks/fit_overhead.py [--rounds 3] [--nets lenet300 lenet5] [--threads N]

Writes benchmarks/results/fit_overhead.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bayesprune as bp
from bayesprune.data import fashion_mnist
from bayesprune.guides import MAP, MeanField
from bayesprune.priors import HALO
from bayesprune.zoo import build


def plain_epoch(name: str, data, epoch: int) -> float:
    net = build(name)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    net.train()
    t0 = time.perf_counter()
    for xb, yb in data.batches(128, epoch=epoch, seed=0):
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def halo_epoch(name: str, data, guide: str, per: str) -> float:
    net = bp.sparsify(build(name), HALO(3e-5, 3e-5, per=per))
    g = MAP(net) if guide == "map" else MeanField(net)
    r = bp.fit(net, data, g, epochs=1, progress=False, validate=False)
    return r.history[0]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nets", nargs="+", default=["lenet300", "lenet5"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "fit_overhead.json"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = fashion_mnist()
    variants = [
        ("MAP", "map", "weight"),
        ("mean-field", "mean_field", "weight"),
        ("MAP per-unit", "map", "unit"),
    ]
    results = {}
    for name in args.nets:
        plain_epoch(name, data, 0)  # warm-up (allocator, kernels)
        times: dict[str, list[float]] = {"plain": []}
        for label, *_ in variants:
            times[label] = []
        for r in range(args.rounds):
            times["plain"].append(plain_epoch(name, data, r))
            for label, guide, per in variants:
                times[label].append(halo_epoch(name, data, guide, per))
        med = {k: statistics.median(v) for k, v in times.items()}
        results[name] = {
            "seconds": times,
            "median": med,
            "ratio": {k: med[k] / med["plain"] for k in med},
        }
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "rounds": args.rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    labels = ["plain"] + [v[0] for v in variants]
    print(
        f"epoch time relative to plain PyTorch (median of {args.rounds} interleaved rounds, {meta['threads']} threads)"
    )
    print("| net | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for name, res in results.items():
        cells = [
            f"{res['ratio'][k]:.2f}" + (f" ({res['median'][k]:.1f} s)" if k == "plain" else "")
            for k in labels
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
