"""Do unit gates that reach θ = 0 ever reopen when nothing removes them?

``fit(remove_dead=True)`` cuts a unit out as soon as its gate probability θ is exactly 0
at an epoch's end. Under the straight-through gate gradient a closed gate still gets a
gradient (its unit's output is multiplied by a 0 draw, but ∂z/∂θ = 1), so it could be
pushed back above 0 -- removal would then change the optimisation, not only its speed.
This script fits Bernoulli unit gates (MAP weights, the settings of ``gates_fashion.py``)
**without** removal on a Fashion-MNIST subset and watches θ after every optimizer step
(an ``on_step_end`` callback; the counting stays on the device, read once per epoch):

- ``closed``: gates at θ = 0 at the epoch's end;
- ``ever``: gates that were at 0 after some step so far;
- ``reopened``: gates that were at 0 after some earlier step and were above 0 after a
  step of this epoch (distinct gates), and ``events``: steps at which a gate went from 0
  to above 0 (a gate reopening twice counts twice);
- ``open at end``: of the gates ever at 0, those above 0 at the epoch's end;
- ``closed steps``: (gate, step) pairs with the gate at 0 before the step, and of them
  ``pushed up``: those where the gate got a negative gradient, i.e. the plain gradient step would have lifted it (Adam's momentum and the
  projection decide whether it actually moves).

``--nets`` takes zoo names and ``lenet300-gelu``: LeNet-300-100's layers with GELU instead
of ReLU. The zoo nets gate a layer's output before a ReLU, and ``relu'(0) = 0`` in torch,
so a closed gate's likelihood slope is exactly 0 there; GELU has slope 1/2 at 0.

    python benchmarks/reopened_gates.py [--nets lenet300 lenet5 lenet300-gelu] [--n-train 10000]
        [--epochs 3] [--configs 30:uniform 8:mixed] [--schedule cosine]

Prints one line per epoch and writes ``benchmarks/results/reopened_gates.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn

import bayesprune as bp
from bayesprune.data import fashion_mnist
from bayesprune.guides import MAP
from bayesprune.priors import UnitGates
from bayesprune.zoo import build


class ReopenWatch:
    """Counts, per epoch, the gates whose θ comes back from exactly 0 (see the module
    docstring); every per-step update is a device op, nothing is read until the epoch ends."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []
        self.ever: torch.Tensor | None = None  # at 0 after some step so far
        self.prev: torch.Tensor | None = None  # at 0 after the previous step
        self.reopened: torch.Tensor | None = None  # reopened during this epoch
        self.events: torch.Tensor | None = None
        self.pushed: torch.Tensor | None = None
        self.closed_steps: torch.Tensor | None = None

    def theta(self, state) -> torch.Tensor:
        return torch.cat([state.guide.gate_theta(s).detach().flatten() for s in state.net.gates])

    def grad(self, state) -> torch.Tensor:
        """The step's loss gradient w.r.t. θ (still there after the optimizer step)."""
        grads = []
        for s in state.net.gates:
            t = state.guide.gate_theta(s)
            grads.append(torch.zeros_like(t) if t.grad is None else t.grad.detach())
        return torch.cat([g.flatten() for g in grads])

    def on_fit_start(self, state) -> None:
        t = self.theta(state)
        self.ever, self.prev = t == 0, t == 0
        self.on_epoch_start(state)

    def on_epoch_start(self, state) -> None:
        n = self.ever.numel()
        self.reopened = torch.zeros(n, dtype=torch.bool, device=self.ever.device)
        self.events = torch.zeros((), dtype=torch.long, device=self.ever.device)
        self.pushed = torch.zeros((), dtype=torch.long, device=self.ever.device)
        self.closed_steps = torch.zeros((), dtype=torch.long, device=self.ever.device)

    def on_step_end(self, state) -> None:
        zero = self.theta(state) == 0
        self.pushed += (self.prev & (self.grad(state) < 0)).sum()
        self.closed_steps += self.prev.sum()
        back = self.ever & ~zero  # at 0 after an earlier step, above 0 now
        self.reopened |= back
        self.events += (self.prev & ~zero).sum()
        self.ever |= zero
        self.prev = zero

    def on_epoch_end(self, state) -> None:
        row = {
            "epoch": state.epoch,
            "gates": int(self.ever.numel()),
            "closed": int(self.prev.sum()),
            "ever": int(self.ever.sum()),
            "reopened": int(self.reopened.sum()),
            "events": int(self.events),
            "open_at_end": int((self.ever & ~self.prev).sum()),
            "closed_steps": int(self.closed_steps),
            "pushed_up": int(self.pushed),
            "units": state.history[-1].get("units"),
            "val_accuracy": state.history[-1].get("val_accuracy"),
        }
        self.epochs.append(row)
        print(
            f"  epoch {row['epoch']}: {row['gates']} gates, closed {row['closed']}, ever at 0 "
            f"{row['ever']}, reopened {row['reopened']} ({row['events']} events), "
            f"open at end {row['open_at_end']}, pushed up {row['pushed_up']} of "
            f"{row['closed_steps']} closed steps, "
            f"val acc {100 * row['val_accuracy']:.2f}%",
            flush=True,
        )


def network(name: str) -> nn.Module:
    if name == "lenet300-gelu":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 300),
            nn.GELU(),
            nn.Linear(300, 100),
            nn.GELU(),
            nn.Linear(100, 10),
        )
    return build(name)


def run(name: str, data, epochs: int, gamma: float, cost: str, schedule, seed: int) -> dict:
    torch.manual_seed(seed)
    example = data.train.x[:1]  # FLOPs/params per unit for cost="mixed"
    net = bp.sparsify(network(name), UnitGates(gamma, cost=cost), example_input=example)
    guide = MAP(net)
    watch = ReopenWatch()
    t0 = time.perf_counter()
    bp.fit(
        net,
        data,
        guide,
        epochs=epochs,
        seed=seed,
        role_lr={"gate": 1e-2},
        schedule=schedule,
        callbacks=[watch],
        progress=False,
    )
    return {"seconds": time.perf_counter() - t0, "epochs": watch.epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["lenet300"])
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--configs", nargs="+", default=["30:uniform", "8:mixed"])
    ap.add_argument("--schedule", default="cosine", help="none|cosine")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "reopened_gates.json"
    )
    args = ap.parse_args()
    schedule = None if args.schedule in ("none", "None") else args.schedule
    data = fashion_mnist().first(args.n_train)
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    for name in args.nets:
        for config in args.configs:
            gamma, cost = float(config.split(":")[0]), config.split(":")[1]
            print(f"{name}, UnitGates(gamma={gamma:g}, cost={cost!r}), no removal:", flush=True)
            r = run(name, data, args.epochs, gamma, cost, schedule, args.seed)
            report["runs"].append({"net": name, "gamma": gamma, "cost": cost, **r})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
