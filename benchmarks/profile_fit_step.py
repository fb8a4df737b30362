"""Where one training step of a fit spends its time, per variant, next to plain PyTorch.

Runs the step :func:`bayesprune.fit` runs (loss, ``zero_grad``, ``backward``, fused Adam
``step``, ``guide.project_()``) on random batches of 128, times it, and prints the
operators with the most self CPU time under ``torch.profiler``.

    python benchmarks/profile_fit_step.py [--nets lenet300 lenet5] [--variants map mf gates]
        [--loss fused] [--steps 100] [--top 12]

Variants: ``map`` (HALO, λ trained), ``profiled`` (HALO, ``MAP(positive="profiled")``),
``mf`` (HALO mean-field), ``unit`` (HALO per unit), ``gates`` (unit gates).
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import bayesprune as bp
from bayesprune.guides import MAP, MeanField
from bayesprune.inference.losses import loss_from_name
from bayesprune.priors import HALO, UnitGates
from bayesprune.zoo import build

N_DATA = 60_000


def make(net_name: str, variant: str):
    """``(step function, parameters)`` for one variant, or plain PyTorch for ``"plain"``."""
    module = build(net_name)
    if variant == "plain":
        opt = torch.optim.Adam(module.parameters(), lr=1e-3, fused=True)

        def plain_step(x, y):
            loss = F.cross_entropy(module(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return plain_step
    prior = {
        "map": HALO(3e-5, 3e-5),
        "profiled": HALO(3e-5, 3e-5),
        "mf": HALO(3e-5, 3e-5),
        "unit": HALO(3e-5, 3e-5, per="unit"),
        "gates": UnitGates(gamma=8.0),
    }[variant]
    net = bp.sparsify(module, prior)
    if variant == "mf":
        guide = MeanField(net)
    else:
        guide = MAP(net, positive="profiled" if variant == "profiled" else "exp")
    params = list(guide.parameters()) + [p for _, p in net.deterministic_parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    loss_fn = loss_from_name(ARGS.loss)

    def step(x, y):
        loss = loss_fn(net, guide, x, y, N_DATA) / N_DATA
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        guide.project_()

    return step


def main() -> None:
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["lenet300", "lenet5"])
    ap.add_argument("--variants", nargs="+", default=["map", "mf", "unit", "gates"])
    ap.add_argument("--loss", default="fused")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--top", type=int, default=12)
    ARGS = ap.parse_args()
    pyro.enable_validation(False)  # as fit does after its first step
    torch.manual_seed(0)
    for net_name in ARGS.nets:
        x = torch.randn(128, 1, 28, 28)
        y = torch.randint(0, 10, (128,))
        for variant in ["plain", *ARGS.variants]:
            step = make(net_name, variant)
            for _ in range(10):
                step(x, y)
            t0 = time.perf_counter()
            for _ in range(ARGS.steps):
                step(x, y)
            ms = 1e3 * (time.perf_counter() - t0) / ARGS.steps
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(20):
                    step(x, y)
            print(f"\n### {net_name} {variant}: {ms:.3f} ms/step")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=ARGS.top))


if __name__ == "__main__":
    main()
