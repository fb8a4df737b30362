"""The demo fit (``models/gates-lenet5.toml``: unit gates on LeNet-5, Fashion-MNIST) on a
GPU: time per step, peak device memory, and the fit's epoch against a plain PyTorch epoch
of the same dense LeNet-5 (same batches, Adam), measured interleaved in this one run.

    python benchmarks/gpu_smoke.py [--device cuda] [--epochs 2] [--rounds 3] [--synthetic]

Runs on CPU too (``--device cpu``), for a dry run. ``--synthetic`` uses random images of
Fashion-MNIST's shape when the data set is not installed. Also checks that no step after
the first makes the host wait for the device (``torch.cuda.set_sync_debug_mode``).
Writes ``benchmarks/results/gpu_smoke.json``.
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
from bayesprune.cli.spec import Spec
from bayesprune.data import synthetic_classification
from bayesprune.inference.loop import cuda_sync_check
from bayesprune.zoo import build

SPEC = Path(__file__).parents[1] / "models" / "gates-lenet5.toml"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def plain_epoch(data, dev: torch.device, batch: int, epoch: int) -> float:
    torch.manual_seed(epoch)
    net = build("lenet5").to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    sync(dev)
    t0 = time.perf_counter()
    for xb, yb in data.batches(batch, epoch=epoch, seed=0):
        loss = F.cross_entropy(net(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(dev)
    return time.perf_counter() - t0


def gated_fit(spec: Spec, data, dev: torch.device, epochs: int):
    net = spec.build_net()
    kw = {**spec.fit_kwargs(), "epochs": epochs, "device": dev, "progress": False}
    sync(dev)
    t0 = time.perf_counter()
    result = bp.fit(net, data, spec.build_guide(net), **kw)
    sync(dev)
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--synthetic", action="store_true", help="random images, no data set")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "gpu_smoke.json"
    )
    args = ap.parse_args()
    with cuda_sync_check():  # a host sync in any fit step after the first raises
        measure(args)


def measure(args: argparse.Namespace) -> None:
    dev = torch.device(args.device)
    spec = Spec.load(SPEC)
    if args.synthetic:
        data = synthetic_classification(60_000, 5_000, 0, input_shape=(1, 28, 28), n_classes=10)
    else:
        data = spec.build_data()
    data = data.to(dev)
    batch = spec.fit["batch_size"]

    plain_epoch(data, dev, batch, 0)  # warm-up: kernels, allocator
    plain, fitted = [], []
    for r in range(args.rounds):
        plain.append(plain_epoch(data, dev, batch, r))
        result, _ = gated_fit(spec, data, dev, 1)
        fitted.append(result.history[0]["seconds"])
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    result, seconds = gated_fit(spec, data, dev, args.epochs)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None
    steps = data.num_batches(batch)
    out = {
        "meta": {
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.machine(),
            "torch": torch.__version__,
            "data": data.name,
            "batch": batch,
            "rounds": args.rounds,
        },
        "plain_epoch_s": plain,
        "fit_epoch_s": fitted,
        "ratio": statistics.median(fitted) / statistics.median(plain),
        "fit_step_ms": 1000 * statistics.median(fitted) / steps,
        "plain_step_ms": 1000 * statistics.median(plain) / steps,
        "fit_seconds": seconds,
        "epochs": args.epochs,
        "peak_memory_mib": peak,
        "final": result.final,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"device {out['meta']['device']}, batch {batch}, {steps} steps per epoch")
    print("| | step (ms) | epoch (s) |\n|---|---|---|")
    print(
        f"| plain PyTorch LeNet-5 | {out['plain_step_ms']:.2f} | {statistics.median(plain):.2f} |"
    )
    print(f"| gated fit (1 epoch) | {out['fit_step_ms']:.2f} | {statistics.median(fitted):.2f} |")
    print(f"fit / plain: {out['ratio']:.2f}x")
    if peak is not None:
        print(f"peak device memory during the {args.epochs}-epoch fit: {peak:.0f} MiB")
    acc = result.final.get("val_accuracy")
    units = "-".join(str(v) for v in result.final.get("units", {}).values())
    print(
        f"{args.epochs}-epoch fit: {seconds:.1f} s, val acc {100 * (acc or 0):.2f}%, units {units}"
    )
    print(
        "no host sync in any step after the first"
        if dev.type == "cuda"
        else "(CPU: sync check n/a)"
    )


if __name__ == "__main__":
    main()
