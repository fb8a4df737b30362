"""Unstructured pruning methods side by side on Fashion-MNIST (reduced scale).

For each removed fraction κ: a dense LeNet-300-100 trained ``--epochs`` epochs through
``bayesprune.methods.train`` (the fit loop), pruned by global magnitude without and with
``--ft-epochs`` of masked fine-tune; HALO (MAP, ``--halo-xi``) fitted ``--epochs`` epochs
and collapsed to the same rate; HyperSparse/ART fitted with the same total budget as
magnitude + fine-tune (``--epochs + --ft-epochs``: 1 warm-up epoch, at most
``--epochs - 1`` regularised ones, then ``--ft-epochs`` of masked fine-tune); with
``--jackpot-epochs J``, lottery-jackpot mask searches over the dense net's frozen weights
(magnitude- and random-initialised scores, J epochs each, restricted swaps). Reported:
test accuracy of the extracted network (test is only reported; nothing is chosen on it).

    python benchmarks/compare_methods.py [--n-train 10000] [--epochs 3] [--ft-epochs 1]
        [--jackpot-epochs 3] [--rates 0.9 0.95 0.98]

Writes benchmarks/results/compare_methods.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import bayesprune as bp
from bayesprune.data import Dataset, fashion_mnist
from bayesprune.methods import accuracy, magnitude_keep, train
from bayesprune.priors import HALO, HyperSparse, Jackpot
from bayesprune.zoo import build


def run(data: Dataset, args: argparse.Namespace) -> dict:
    test = data.test
    torch.manual_seed(args.seed)
    dense = build(args.net)
    t0 = time.perf_counter()
    train(dense, data, epochs=args.epochs, seed=args.seed, lr=args.lr)
    out: dict = {"dense": accuracy(dense, test.x, test.y), "dense_s": time.perf_counter() - t0}
    torch.manual_seed(args.seed)
    halo = bp.sparsify(build(args.net), HALO(args.halo_xi, args.halo_xi))
    t0 = time.perf_counter()
    halo_fit = bp.fit(
        halo, data, epochs=args.epochs, seed=args.seed, lr=args.lr,
        role_lr={"scale": 1e-2}, progress=False,
    )  # fmt: skip
    out["halo_s"] = time.perf_counter() - t0
    for rate in args.rates:
        row: dict = {}
        keep = magnitude_keep(dense, keep=1 - rate)
        row["magnitude"] = accuracy(bp.extract(dense, keep), test.x, test.y)
        tuned = copy.deepcopy(dense)
        train(tuned, data, epochs=args.ft_epochs, seed=args.seed + 1, lr=args.lr, keep=keep)
        row["magnitude_ft"] = accuracy(bp.extract(tuned, keep), test.x, test.y)
        small = bp.extract(halo, bp.collapse(halo, halo_fit.guide, keep=1 - rate))
        row["halo"] = accuracy(small, test.x, test.y)
        torch.manual_seed(args.seed)
        prior = HyperSparse(
            sparsity=rate,
            lambda_init=args.hs_lambda,
            eta=args.hs_eta,
            warmup=1,
            finetune=args.ft_epochs,
            window=1,
            max_regularise=max(args.epochs - 1, 1),
        )
        net = bp.sparsify(build(args.net), prior)
        t0 = time.perf_counter()
        res = bp.fit(
            net, data, epochs=args.epochs + args.ft_epochs, seed=args.seed, lr=args.lr,
            progress=False,
        )  # fmt: skip
        small = bp.extract(net, bp.collapse(net, res.guide, keep=1 - rate))
        row["hypersparse"] = accuracy(small, test.x, test.y)
        row["hypersparse_s"] = time.perf_counter() - t0
        row["hypersparse_history"] = [
            {k: h.get(k) for k in ("phase", "alpha", "val_accuracy", "pruned_val_accuracy")}
            for h in res.history
        ]
        if args.jackpot_epochs:
            row.update(jackpots(dense, data, rate, args))
        out[str(rate)] = row
    return out


def jackpots(dense: torch.nn.Module, data: Dataset, rate: float, args: argparse.Namespace) -> dict:
    """Lottery-jackpot mask searches over the dense net's frozen weights, magnitude- and
    random-initialised scores, ``--jackpot-epochs`` each, the scores' learning rate chosen
    on the validation split among ``--jackpot-lrs``: test accuracy of the extracted
    network, validation accuracy after every epoch, and the first epoch at which the
    magnitude-initialised search reaches the random one's final validation accuracy."""
    row: dict = {}
    for init in ("magnitude", "random"):
        best = None
        for lr in args.jackpot_lrs:
            torch.manual_seed(args.seed)
            net = bp.sparsify(copy.deepcopy(dense), Jackpot(sparsity=rate, init=init))
            t0 = time.perf_counter()
            res = bp.fit(
                net, data, epochs=args.jackpot_epochs, seed=args.seed, lr=lr, progress=False
            )
            seconds = time.perf_counter() - t0
            val = [h["val_accuracy"] for h in res.history]
            row[f"jackpot_{init}_val_lr{lr:g}"] = val
            if best is None or val[-1] > best[0][-1]:
                best = (val, lr, seconds, bp.extract(net, bp.collapse(net, res.guide)))
        val, lr, seconds, small = best
        row[f"jackpot_{init}"] = accuracy(small, data.test.x, data.test.y)
        row[f"jackpot_{init}_lr"], row[f"jackpot_{init}_s"] = lr, seconds
        row[f"jackpot_{init}_val"] = val
    target = row["jackpot_random_val"][-1]
    reached = [e + 1 for e, a in enumerate(row["jackpot_magnitude_val"]) if a >= target]
    row["jackpot_magnitude_epochs_to_random_final"] = reached[0] if reached else None
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="lenet300")
    ap.add_argument("--n-train", type=int, default=10000, help="training examples used")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=1)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--halo-xi", type=float, default=3e-5)
    ap.add_argument("--hs-lambda", type=float, default=1e-5)
    ap.add_argument("--hs-eta", type=float, default=1.5)
    ap.add_argument("--jackpot-epochs", type=int, default=0, help="0: no jackpot columns")
    ap.add_argument(
        "--jackpot-lrs", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4],
        help="learning rates of the mask scores; the best on validation is reported",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "compare_methods.json"
    )
    args = ap.parse_args()
    full = fashion_mnist(flatten=True)
    data = full.first(args.n_train)
    n = data.n_train
    result = run(data, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "result": result}, indent=2) + "\n"
    )
    print(f"\n{args.net}, {n} training examples, {args.epochs} epochs (+{args.ft_epochs} ft)")
    print(f"dense test accuracy {result['dense']:.2%}\n")
    jp = args.jackpot_epochs > 0
    head = "| removed | magnitude | magnitude + ft | HALO | HyperSparse (ART) |"
    head += " jackpot, magnitude init | jackpot, random init | epochs to random's final |" * jp
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for rate in args.rates:
        r = result[str(rate)]
        line = (
            f"| {100 * rate:g}% | {r['magnitude']:.2%} | {r['magnitude_ft']:.2%} | "
            f"{r['halo']:.2%} | {r['hypersparse']:.2%} |"
        )
        if jp:
            line += (
                f" {r['jackpot_magnitude']:.2%} | {r['jackpot_random']:.2%} |"
                f" {r['jackpot_magnitude_epochs_to_random_final']} of {args.jackpot_epochs} |"
            )
        print(line)


if __name__ == "__main__":
    main()
