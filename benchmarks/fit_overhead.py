"""Per-epoch cost of a fit relative to plain PyTorch training of the same dense net.

Everything is measured in this one process, interleaved round by round (plain, MAP,
mean-field, MAP per-unit, unit gates, plain, ...) on the same in-memory Fashion-MNIST
tensors, batch 128, Adam (fused) lr 1e-3; the figure is the ratio of median epoch times.

With ``--gated-epochs N`` (N > 0) it also measures, on LeNet-5, the whole gated fit with
dead units removed during training (``UnitGates(gamma=--gamma, cost="mixed")``, gates at
learning rate ``--gate-lr``, ``fit(..., remove_dead=True)``, or every ``--remove-every``
steps) against plain training of the
dense net for the same N epochs (wall time and test accuracy of both), and the latency of the extracted network
(``collapse`` then ``extract``) against a dense LeNet-5 built directly with the same
layer sizes (``bayesprune.metrics.paired_latency``, interleaved).

With ``--compiled-epochs N`` (N >= 2) it fits every variant on every net for N epochs with
``loss="compiled"`` (``torch.compile``; the compiling falls in the first epoch) next to N
epochs of plain eager training: the first epoch's seconds and the ratio of the median of the
later epochs to the median plain epoch (the steady state of a long fit).

    python benchmarks/fit_overhead.py [--rounds 3] [--nets lenet300 lenet5] [--threads N]
        [--gated-epochs 3] [--compiled-epochs 10]

Writes benchmarks/results/fit_overhead.json and prints Markdown tables.
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
from bayesprune.metrics import paired_latency
from bayesprune.priors import HALO, UnitGates
from bayesprune.zoo import build

#: (label, guide, prior): HALO per weight with λ trained or profiled out, mean-field, per unit,
#: and unit gates (MAP)
VARIANTS = [
    ("MAP", "map", "weight"),
    ("MAP profiled", "map_profiled", "weight"),
    ("mean-field", "mean_field", "weight"),
    ("MAP per-unit", "map", "unit"),
    ("unit gates", "map", "gates"),
]


def plain_epoch(name: str, data, epoch: int, net: torch.nn.Module | None = None, opt=None) -> float:
    net = build(name) if net is None else net
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True) if opt is None else opt
    net.train()
    t0 = time.perf_counter()
    for xb, yb in data.batches(128, epoch=epoch, seed=0):
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def bayes_epochs(name: str, data, guide: str, prior: str, loss: str = "fused", epochs: int = 1):
    """Seconds of each epoch of one fit of ``name`` (one variant)."""
    p = UnitGates(gamma=8.0) if prior == "gates" else HALO(3e-5, 3e-5, per=prior)
    net = bp.sparsify(build(name), p)
    if guide == "mean_field":
        g = MeanField(net)
    else:
        g = MAP(net, positive="profiled" if guide == "map_profiled" else "exp")
    r = bp.fit(net, data, g, epochs=epochs, loss=loss, progress=False, validate=False)
    return [h["seconds"] for h in r.history]


@torch.no_grad()
def accuracy(module: torch.nn.Module, split) -> float:
    module.eval()
    hits = sum(
        int((module(split.x[i : i + 2048]).argmax(-1) == split.y[i : i + 2048]).sum())
        for i in range(0, len(split), 2048)
    )
    return hits / len(split)


def compiled_fits(nets: list[str], data, epochs: int) -> dict:
    """Every variant fitted for ``epochs`` epochs with ``loss="compiled"``, per net: the first
    epoch (which carries the compiling) and the median of the others against the median plain
    (eager) epoch measured right before."""
    out = {}
    for name in nets:
        plain = [plain_epoch(name, data, e) for e in range(epochs)]
        res = {"plain": plain}
        for label, guide, prior in VARIANTS:
            res[label] = bayes_epochs(name, data, guide, prior, loss="compiled", epochs=epochs)
        steady = {k: statistics.median(v[1:]) for k, v in res.items()}
        out[name] = {
            "seconds": res,
            "steady_ratio": {k: steady[k] / statistics.median(plain) for k in steady},
            "first_epoch": {k: v[0] for k, v in res.items()},
        }
    return out


def gated_vs_plain(
    data, epochs: int, gamma: float = 8.0, gate_lr: float = 1e-2, every: int | None = None
) -> dict:
    """Whole gated LeNet-5 fit with live removal vs plain dense training, same epochs;
    then the extracted network's latency vs a dense LeNet-5 of the same layer sizes."""
    torch.manual_seed(0)
    dense = build("lenet5")
    opt = torch.optim.Adam(dense.parameters(), lr=1e-3, fused=True)
    plain_s = sum(plain_epoch("lenet5", data, e, dense, opt) for e in range(epochs))
    net = bp.sparsify(build("lenet5"), UnitGates(gamma=gamma, cost="mixed"))
    t0 = time.perf_counter()
    result = bp.fit(
        net,
        data,
        epochs=epochs,
        role_lr={"gate": gate_lr},
        progress=False,
        validate=False,
        remove_dead=every or True,
    )
    gated_s = time.perf_counter() - t0
    small = bp.extract(net, bp.collapse(net, result.guide))
    sizes = [small.conv1.out_channels, small.conv2.out_channels, small.fc1.out_features]
    same_shape = build("lenet5", channels=sizes)
    lat_small, lat_same = paired_latency(small, same_shape, data.test.x[:256])
    return {
        "epochs": epochs,
        "gamma": gamma,
        "gate_lr": gate_lr,
        "remove_every": every,
        "seconds": {"plain": plain_s, "gated": gated_s},
        "ratio": gated_s / plain_s,
        "test_accuracy": {
            "plain": accuracy(dense, data.test),
            "extracted": accuracy(small, data.test),
        },
        "units": sizes,
        "latency_ms": [
            {
                "batch": a["batch_size"],
                "extracted": 1e3 * a["median"],
                "same_shape": 1e3 * b["median"],
                "ratio": a["median"] / b["median"],
            }
            for a, b in zip(lat_small, lat_same, strict=True)
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nets", nargs="+", default=["lenet300", "lenet5"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--gated-epochs", type=int, default=0, help="epochs of the gated-fit section")
    ap.add_argument("--gamma", type=float, default=8.0, help="gate prior strength (gated fit)")
    ap.add_argument("--gate-lr", type=float, default=1e-2, help="gates' learning rate (gated fit)")
    ap.add_argument(
        "--remove-every", type=int, default=None, help="also remove dead units every N steps"
    )
    ap.add_argument("--compiled-epochs", type=int, default=0, help="epochs of the compile section")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "fit_overhead.json"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = fashion_mnist()
    variants = VARIANTS
    results = {}
    for name in args.nets:
        plain_epoch(name, data, 0)  # warm-up (allocator, kernels)
        times: dict[str, list[float]] = {"plain": []}
        for label, *_ in variants:
            times[label] = []
        for r in range(args.rounds):
            times["plain"].append(plain_epoch(name, data, r))
            for label, guide, prior in variants:
                times[label].append(bayes_epochs(name, data, guide, prior)[0])
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
    gated = (
        gated_vs_plain(data, args.gated_epochs, args.gamma, args.gate_lr, args.remove_every)
        if args.gated_epochs > 0
        else None
    )
    compiled = (
        compiled_fits(args.nets, data, args.compiled_epochs) if args.compiled_epochs > 1 else None
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"meta": meta, "results": results, "gated_fit": gated, "compiled": compiled}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
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
    if compiled is not None:
        n = args.compiled_epochs
        print(
            f"\nloss='compiled', {n} epochs: median of epochs 2-{n} / median plain eager epoch "
            "(first epoch in seconds, with the compiling)"
        )
        print("| net | " + " | ".join(labels) + " |")
        print("|---|" + "---|" * len(labels))
        for name, res in compiled.items():
            cells = [
                f"{res['steady_ratio'][k]:.2f} ({res['first_epoch'][k]:.1f} s)" for k in labels
            ]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if gated is not None:
        acc = gated["test_accuracy"]
        print(
            f"\nLeNet-5, {gated['epochs']} epochs: gated fit with removal / plain dense training "
            f"{gated['ratio']:.2f} ({gated['seconds']['gated']:.1f} s / {gated['seconds']['plain']:.1f} s); "
            f"test accuracy extracted {100 * acc['extracted']:.2f}% vs dense {100 * acc['plain']:.2f}%; "
            f"units {gated['units']}"
        )
        for lat in gated["latency_ms"]:
            print(
                f"latency at batch {lat['batch']}: extracted {lat['extracted']:.3f} ms, "
                f"same shape built directly {lat['same_shape']:.3f} ms, ratio {lat['ratio']:.3f}"
            )


if __name__ == "__main__":
    main()
