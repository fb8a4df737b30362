"""Block gates on real data: a CIFAR-style ResNet-20 on Fashion-MNIST padded to 32×32,
dense against a budget in blocks or FLOPs.

Both fits: the same epochs, Adam lr 1e-3, batch 128, cosine schedule. The budgeted fit
puts one Bernoulli gate on each of the 9 residual blocks (``BlockGates(cost="flops")``,
gate lr 1e-2) and ends at the budget (``fit(budget=...)``, then
``collapse(budget=...)``): a closed block becomes its shortcut in the extracted network.
The training split can be subsampled (``--train``) to keep the run short on 2 cores.

    python benchmarks/block_budget_resnet.py [--width 0.5] [--epochs 3] [--train 20000]
        [--budget flops=0.5] [--threads 1]

Writes benchmarks/results/block_budget_resnet.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import bayesprune as bp
from bayesprune import Budget
from bayesprune.data import Dataset, Split, fashion_mnist
from bayesprune.guides import MAP
from bayesprune.methods import accuracy, train
from bayesprune.metrics import count_flops, count_parameters
from bayesprune.priors import BlockGates
from bayesprune.zoo import build

RESULTS = Path(__file__).parent / "results"


def padded(split: Split, n: int | None = None) -> Split:
    x, y = (split.x, split.y) if n is None else (split.x[:n], split.y[:n])
    return Split(F.pad(x, (2, 2, 2, 2)), y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train", type=int, default=None, help="training examples (default all)")
    ap.add_argument("--budget", default="flops=0.5")
    ap.add_argument("--gamma", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=str(RESULTS / "block_budget_resnet.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    fm = fashion_mnist()
    data = Dataset(
        train=padded(fm.train, args.train),
        val=padded(fm.val),
        test=padded(fm.test),
        n_classes=10,
        name="fashion-mnist-32",
    )

    def resnet() -> torch.nn.Module:
        return build("resnet20", in_channels=1, width=args.width, input_size=32)

    x1 = data.test.x[:1]
    torch.manual_seed(args.seed)
    dense = resnet()
    t0 = time.perf_counter()
    train(dense, data, epochs=args.epochs, seed=args.seed, schedule="cosine")
    dense_s = time.perf_counter() - t0
    dense_macs = count_flops(dense, x1)["macs"]
    row_dense = {
        "test": accuracy(dense, data.test.x, data.test.y),
        "macs": dense_macs,
        "params": count_parameters(dense)["params"],
        "seconds": dense_s,
        "blocks": 9,
    }

    budget = Budget.parse(args.budget)
    torch.manual_seed(args.seed)
    net = bp.sparsify(resnet(), BlockGates(args.gamma, cost="flops"))
    guide = MAP(net)
    t0 = time.perf_counter()
    res = bp.fit(
        net, data, guide, epochs=args.epochs, seed=args.seed, role_lr={"gate": 1e-2},
        schedule="cosine", budget=budget, progress=False,
    )  # fmt: skip
    fit_s = time.perf_counter() - t0
    keep = bp.collapse(net, guide, budget=budget)
    small = bp.extract(net, keep).eval()
    kept = [n for n, ks in keep.items() if not ks.identity]
    row_budget = {
        "budget": budget.config(),
        "test": accuracy(small, data.test.x, data.test.y),
        "macs": count_flops(small, x1)["macs"],
        "params": count_parameters(small)["params"],
        "seconds": fit_s,
        "blocks": len(kept),
        "kept": kept,
        "report": str(keep.budget),
        "trace": [r for h in res.history for r in h.get("budget_trace", [])][::10],
    }
    total = time.perf_counter() - t_all
    out = {
        "args": vars(args),
        "dense": row_dense,
        "budgeted": row_budget,
        "total_seconds": total,
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    n_train = data.train.x.shape[0]
    print(
        f"ResNet-20 ×{args.width:g}, Fashion-MNIST padded to 32×32, {n_train:,} training "
        f"examples, {args.epochs} epochs; whole run {total / 60:.1f} min\n"
    )
    print("| network | blocks kept | test | MACs | params | fit time |")
    print("|---|---|---|---|---|---|")
    for label, r in (("dense", row_dense), (f"budget {args.budget}", row_budget)):
        print(
            f"| {label} | {r['blocks']} of 9 | {100 * r['test']:.2f}% | {r['macs']:,} "
            f"({r['macs'] / dense_macs:.2f}) | {r['params']:,} | {r['seconds']:.0f} s |"
        )
    print("\nkept blocks:", ", ".join(kept))
    print(keep.budget)


if __name__ == "__main__":
    main()
