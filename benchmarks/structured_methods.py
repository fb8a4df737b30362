"""Structured pruning at matched FLOPs: Bernoulli unit gates vs L1-norm unit pruning.

For each gate price γ: unit gates (``UnitGates(γ, cost="mixed")``, MAP, removal of dead
units during training) fitted ``--epochs + --ft-epochs`` epochs, collapsed (θ > 1/2) and
extracted; then L1-norm pruning of a dense network (trained ``--epochs`` epochs through
the same fit loop) to *the same number of units in every layer* -- hence exactly the same
FLOPs and parameters -- one-shot and with ``--ft-epochs`` of masked fine-tune. Reported:
test accuracy of the extracted networks (nothing is chosen on test), FLOPs as a fraction
of dense.

    python benchmarks/structured_methods.py [--net lenet5] [--n-train 10000] [--epochs 3]
        [--ft-epochs 1] [--gammas 4 8 16]

Writes benchmarks/results/structured_methods.json and prints a Markdown table.
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
from bayesprune.methods import accuracy, l1_unit_keep, train
from bayesprune.metrics import count_flops
from bayesprune.priors import UnitGates
from bayesprune.zoo import build


def widths(module: torch.nn.Module, names: list[str]) -> dict[str, int]:
    return {n: int(module.get_submodule(n).weight.shape[0]) for n in names}


def run(data: Dataset, args: argparse.Namespace) -> dict:
    test, x1 = data.test, data.train.x[:1]
    torch.manual_seed(args.seed)
    dense = build(args.net)
    train(dense, data, epochs=args.epochs, seed=args.seed)
    dense_flops = count_flops(dense, x1)["flops"]
    out: dict = {"dense": accuracy(dense, test.x, test.y), "rows": []}
    for gamma in args.gammas:
        torch.manual_seed(args.seed)
        net = bp.sparsify(build(args.net), UnitGates(gamma, cost="mixed"))
        t0 = time.perf_counter()
        res = bp.fit(
            net, data, epochs=args.epochs + args.ft_epochs, seed=args.seed,
            role_lr={"gate": 1e-2}, remove_dead=True, progress=False,
        )  # fmt: skip
        gated = bp.extract(net, bp.collapse(net, res.guide))
        layers = list(net.layer_names)
        kept = widths(gated, layers)
        row = {
            "gamma": gamma,
            "units": kept,
            "flops": count_flops(gated, x1)["flops"] / dense_flops,
            "gates": accuracy(gated, test.x, test.y),
            "gates_s": time.perf_counter() - t0,
        }
        full = widths(dense, layers)
        keep = {}
        for n in layers:  # the gated network's unit count in every layer
            keep |= l1_unit_keep(dense, keep=kept[n] / full[n], layers=[n])
        one_shot = bp.extract(dense, keep, example_input=x1)
        assert widths(one_shot, layers) == kept
        row["l1_flops"] = count_flops(one_shot, x1)["flops"] / dense_flops
        row["l1"] = accuracy(one_shot, test.x, test.y)
        tuned = copy.deepcopy(dense)
        train(tuned, data, epochs=args.ft_epochs, seed=args.seed + 1, keep=keep)
        row["l1_ft"] = accuracy(bp.extract(tuned, keep, example_input=x1), test.x, test.y)
        out["rows"].append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="lenet5")
    ap.add_argument("--n-train", type=int, default=10000, help="training examples used")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ft-epochs", type=int, default=1)
    ap.add_argument("--gammas", type=float, nargs="+", default=[4.0, 8.0, 16.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "structured_methods.json"
    )
    args = ap.parse_args()
    full = fashion_mnist(flatten=args.net == "lenet300")
    data = full.first(args.n_train)
    n = data.n_train
    result = run(data, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "result": result}, indent=2) + "\n"
    )
    print(f"\n{args.net}, {n} training examples, dense test accuracy {result['dense']:.2%}\n")
    print("| γ | units | FLOPs | gates | L1 one-shot | L1 + fine-tune |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        units = "-".join(str(v) for v in r["units"].values())
        print(
            f"| {r['gamma']:g} | {units} | {r['flops']:.1%} | {r['gates']:.2%} | "
            f"{r['l1']:.2%} | {r['l1_ft']:.2%} |"
        )


if __name__ == "__main__":
    main()
