"""Head and MLP-unit gates on a small Vision Transformer (ViT-tiny) on Fashion-MNIST.

A dense ViT-tiny (torchvision's VisionTransformer: 7x7 patches, hidden 64, 4 blocks of 4
heads, MLP 128; ``bayesprune.zoo`` ``"vit-tiny"``) trained with plain cross-entropy, then
gated fits: ``UnitGates`` with one gate per attention head (``*.self_attention``) and per
hidden unit of every block's MLP (``*.mlp.0``; GELU(0) = 0, so a closed unit is removed
exactly), MAP weights, dead MLP units removed during training (heads go at extraction).
For each price: test accuracy of the extracted network vs the dense one, heads and MLP
units kept per block, MACs (attention counted per head, ``bayesprune.metrics``),
parameters, and CPU latency of the extracted vs the dense network (interleaved, batch 1
and 256).

    python benchmarks/vit_gates.py [--epochs 8] [--n-train N] [--configs 3:mixed 10:mixed]
        [--width 1.0] [--schedule cosine] [--threads 1]

The defaults (all 55,000 training examples, 8 epochs, two prices, one CPU thread) take
about 11 minutes on 2 CPU cores (measured per example-epoch at 20,000 examples x 3
epochs: ~0.5 ms dense, about the same gated, validation included). ``--n-train 5000
--epochs 1`` is a 30-second check that everything runs. Latency is timed on one thread
by default (``--threads``): numbers from different thread counts do not compare.

Writes benchmarks/results/vit_gates.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import bayesprune as bp
from bayesprune.data import fashion_mnist
from bayesprune.guides import MAP
from bayesprune.methods import accuracy, train
from bayesprune.metrics import compare_latency, count_flops, count_parameters
from bayesprune.priors import UnitGates
from bayesprune.zoo import build

#: the gated layers: every attention layer (per head) and every MLP's first Linear
LAYERS = ["*.self_attention", "*.mlp.0"]


def size(net: torch.nn.Module, x1: torch.Tensor) -> dict:
    flops = count_flops(net, x1)
    return {
        "macs": flops["macs"],
        "macs_by_kind": flops["macs_by_kind"],
        "params": count_parameters(net)["params"],
    }


def dense_run(data, args, schedule) -> dict:
    torch.manual_seed(args.seed)
    net = build("vit-tiny", width=args.width)
    t0 = time.perf_counter()
    hist = train(net, data, epochs=args.epochs, seed=args.seed, schedule=schedule)
    return {
        "net": net,
        "test": accuracy(net, data.test.x, data.test.y),
        "seconds": time.perf_counter() - t0,
        "epoch_seconds": [h["seconds"] for h in hist],
    }


def per_block(keep: dict, kind: str) -> list[int]:
    return [ks.n_kept for name, ks in keep.items() if name.endswith(kind)]


def gated_run(data, args, gamma: float, cost: str, schedule) -> dict:
    torch.manual_seed(args.seed)
    net = bp.sparsify(
        build("vit-tiny", width=args.width),
        UnitGates(gamma, cost=cost, init_prob=args.init_prob),
        LAYERS,
    )
    guide = MAP(net)
    t0 = time.perf_counter()
    res = bp.fit(
        net,
        data,
        guide,
        epochs=args.epochs,
        seed=args.seed,
        role_lr={"gate": 1e-2},
        schedule=schedule,
        remove_dead=True,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    keep = bp.collapse(net, guide)
    small = bp.extract(net, keep).eval()
    return {
        "small": small,
        "heads": per_block(keep, "self_attention"),
        "mlp_units": per_block(keep, "mlp.0"),
        "test": accuracy(small, data.test.x, data.test.y),
        "val": accuracy(small, data.val.x, data.val.y),
        "seconds": seconds,
        "epoch_seconds": [h["seconds"] for h in res.history],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--n-train", type=int, default=None, help="first N training examples")
    ap.add_argument(
        "--configs",
        nargs="+",
        default=["3:mixed", "10:mixed"],
        help="gate prices as GAMMA:COST (cost: uniform, flops, params, mixed)",
    )
    ap.add_argument("--width", type=float, default=1.0, help="ViT-tiny width multiplier")
    ap.add_argument("--schedule", default="cosine", help="lr schedule (none|cosine)")
    ap.add_argument("--init-prob", type=float, default=0.9, help="starting gate probability")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's)")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "vit_gates.json"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    schedule = None if args.schedule in ("none", "None") else args.schedule
    configs = [(float(c.split(":")[0]), c.split(":")[1]) for c in args.configs]
    data = fashion_mnist()
    if args.n_train:
        data = data.first(args.n_train)
    x1, x256 = data.test.x[:1], data.test.x[:256]
    t_start = time.perf_counter()
    dense = dense_run(data, args, schedule)
    dsize = size(dense["net"], x1)
    rows = []
    for gamma, cost in configs:
        g = gated_run(data, args, gamma, cost, schedule)
        lat256 = compare_latency(dense["net"].eval(), g["small"], x256, repeats=20)
        lat1 = compare_latency(dense["net"].eval(), g["small"], x1, repeats=50)
        rows.append(
            {
                "gamma": gamma,
                "cost": cost,
                **{k: v for k, v in g.items() if k != "small"},
                **size(g["small"], x1),
                "ms_256": 1e3 * lat256["b"]["median"],
                "ms_1": 1e3 * lat1["b"]["median"],
                "dense_ms_256": 1e3 * lat256["a"]["median"],
                "dense_ms_1": 1e3 * lat1["a"]["median"],
                "speedup_256": lat256["speedup"],
                "speedup_1": lat1["speedup"],
            }
        )
    report = {
        "args": vars(args) | {"out": str(args.out), "threads_used": torch.get_num_threads()},
        "n_train": data.n_train,
        "dense": {k: v for k, v in dense.items() if k != "net"} | dsize,
        "gated": rows,
        "total_seconds": time.perf_counter() - t_start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nViT-tiny (width {args.width:g}), {data.n_train} training examples, {args.epochs} "
        f"epochs: dense {100 * dense['test']:.2f}% test, {dsize['macs']:,} MACs, "
        f"{dsize['params']:,} params, {dense['seconds']:.0f} s"
    )
    print(
        "| γ | cost | heads per block | MLP units per block | test acc | Δ vs dense | MACs | "
        "params | CPU ms b=256 (speed-up) | CPU ms b=1 (speed-up) | fit time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['gamma']:g} | {r['cost']} | {'-'.join(map(str, r['heads']))} | "
            f"{'-'.join(map(str, r['mlp_units']))} | {100 * r['test']:.2f}% | "
            f"{100 * (r['test'] - dense['test']):+.2f} | {r['macs']:,} "
            f"({r['macs'] / dsize['macs']:.0%}) | {r['params']:,} ({r['params'] / dsize['params']:.0%}) | "
            f"{r['ms_256']:.1f} ({r['speedup_256']:.2f}×) | {r['ms_1']:.2f} ({r['speedup_1']:.2f}×) | "
            f"{r['seconds']:.0f} s |"
        )
    print(f"total {report['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
