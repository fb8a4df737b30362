"""How good can a small LeNet-5 be? Train given conv1-conv2-fc1 widths from scratch.

Also prints each width's FLOPs, e.g. for the prototype's 20-39-41 and 6-10-12.

The reference point for the gated fits in ``gates_fashion.py``: the same 10 epochs, the
same cosine schedule and optimizer, the architecture fixed in advance instead of found
by the gates. If a width trained from scratch falls short of a target accuracy, the
gates cannot be blamed for it.

    python benchmarks/small_lenet5_from_scratch.py [--widths 8-16-64 14-25-21 20-39-41] [--seeds 1]

Writes benchmarks/results/small_lenet5_from_scratch.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from bayesprune.data import fashion_mnist
from bayesprune.methods import accuracy, train
from bayesprune.metrics import count_flops
from bayesprune.zoo import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--widths", nargs="+", default=["6-10-12", "8-16-64", "14-25-21", "20-39-41", "20-50-500"]
    )
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "small_lenet5_from_scratch.json",
    )
    args = ap.parse_args()
    data = fashion_mnist()
    rows = []
    for w in args.widths:
        channels = tuple(int(v) for v in w.split("-"))
        accs = []
        flops = count_flops(build("lenet5", channels=channels), data.test.x[:1])["flops"]
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            net = build("lenet5", channels=channels)
            train(net, data, epochs=args.epochs, seed=seed, schedule="cosine")
            accs.append(accuracy(net, data.test.x, data.test.y))
        rows.append({"widths": w, "test": accs, "flops": flops})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=2) + "\n"
    )
    print(f"LeNet-5 trained from scratch, {args.epochs} epochs, cosine lr, {args.seeds} seed(s)")
    print("| conv1-conv2-fc1 | FLOPs per example | test accuracy |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['widths']} | {r['flops']:,} | {100 * statistics.mean(r['test']):.2f}% |")


if __name__ == "__main__":
    main()
