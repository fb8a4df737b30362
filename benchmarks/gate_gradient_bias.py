"""Bias and variance of the fused loss's straight-through gate gradient.

The fused loss (``fit(loss="fused")``) gives each gate probability θ_u the straight-through
gradient ``∂f/∂z_u + γ_u`` at a hard draw ``z ~ Bernoulli(θ)``, with ``f = −(N/B) log p(y |
x, z, W)``; the exact gradient of the ELBO is ``E_{z−u}[f(z_u=1) − f(z_u=0)] + γ_u``.

Part 1, exact: one- and two-layer MLPs (float64, MAP guide, UnitGates γ = 2, a fixed batch of
32 from a 512-example synthetic set) small enough to enumerate all 2^K gate configurations.
Every estimator is then a function of ``z`` alone, computed once per configuration by the
library's own code (``torch.bernoulli`` forced to ``z``), so its expectation and variance are
exact sums. Reported: the relative bias ``‖E[ĝ_ST] − ∇‖ / ‖∇‖``, the cosine between
``E[ĝ_ST]`` and ``∇``, the share of coordinates whose sign agrees, the same bias from the mean
of 20,000 draws (with its Monte-Carlo noise floor), and for the straight-through (ST),
score-function (Pyro's Trace_ELBO) and local-expectation estimators the relative standard
deviation ``sqrt(tr Cov[ĝ]) / ‖∇‖`` of one draw. Local expectation (Titsias & Lázaro-Gredilla
2015): ``Δ_u = f(z with z_u=1) − f(z with z_u=0) + γ_u`` at the drawn z, unbiased, one extra
forward pass per gate.

Part 2, LeNet-5-Caffe on Fashion-MNIST (synthetic 28x28 data if the files are missing): no
enumeration, so the local-expectation estimator (unbiased) gives the reference mean. At
width 0.25 (5-12-125 gated units) it compares the mean of many ST draws with the mean of many
local draws, before and after one epoch of a gated fit; at full width (20-50-500) it times
one loss + backward step of each.

    python benchmarks/gate_gradient_bias.py [--threads 2] [--lenet-draws 40] [--skip-lenet]

Writes benchmarks/results/gate_gradient_bias.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call

import bayesprune as bp
from bayesprune.data import synthetic_classification
from bayesprune.guides import MAP
from bayesprune.guides.base import key
from bayesprune.inference import FusedELBO, TraceELBO
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.priors import UnitGates
from bayesprune.zoo import build

F64 = torch.float64
GAMMA = 2.0
N_DRAWS = 20_000


# --- the local-expectation estimator (kept here: it does not pay, see the README) -----------


def _per_example_gate(gate: Tensor, dim: int):
    def hook(module: nn.Module, inputs: object, out: Tensor) -> Tensor:
        shape = [out.shape[0]] + [1] * (out.dim() - 1)
        shape[dim] = gate.shape[1]
        return out * gate.reshape(shape)

    return hook


@torch.no_grad()
def flipped_log_liks(
    net: BayesianNet, values: dict[str, Tensor], x: Tensor, y: Tensor, replicas: int = 64
) -> list[Tensor]:
    """``log p(y | x, z with gate u flipped, W)`` for every gate unit u (one tensor per gate
    site), ``replicas`` flips stacked into one forward pass (per-example modules only)."""
    for name, m in net.module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(f"local expectation: BatchNorm {name!r} in training mode")
    targets = net.gate_targets(x)
    overrides = {s.replaces: values[s.name] for s in net.replacing}
    current = [values[s.name].detach().reshape(-1) for s in net.gates]
    sizes = [c.numel() for c in current]
    flat = torch.cat(current)
    n_units, batch = flat.numel(), x.shape[0]
    out_ll = torch.empty(n_units, dtype=flat.dtype)
    for start in range(0, n_units, replicas):
        units = torch.arange(start, min(start + replicas, n_units))
        rows = torch.arange(len(units))
        z = flat.expand(len(units), n_units).clone()
        z[rows, units] = 1 - z[rows, units]
        xr = x.repeat(len(units), *([1] * (x.dim() - 1)))
        handles = []
        try:
            for s, g in zip(net.gates, torch.split(z, sizes, dim=1), strict=True):
                mod = net.module.get_submodule(targets[s.name])
                hook = _per_example_gate(g.repeat_interleave(batch, dim=0), s.meta["dim"])
                handles.append(mod.register_forward_hook(hook))
            out = functional_call(net.module, overrides, (xr,), strict=False, tie_weights=False)
        finally:
            for h in handles:
                h.remove()
        for r, u in enumerate(units.tolist()):
            out_ll[u] = net.likelihood.log_prob(out[r * batch : (r + 1) * batch], y)
    return [p.reshape(s.shape) for p, s in zip(torch.split(out_ll, sizes), net.gates, strict=True)]


class LocalExpectationELBO:
    """The fused loss's value and weight gradients; θ gets ``Δ_u`` instead of ``∂f/∂z_u``."""

    name = "local"

    def __init__(self, replicas: int = 64) -> None:
        self.replicas = replicas

    def __call__(self, net: BayesianNet, guide, x: Tensor, y: Tensor, n_data: int) -> Tensor:
        values, log_q = guide.rsample()
        for s in net.gates:
            values[s.name] = values[s.name].detach()
        scale = n_data / x.shape[0]
        log_lik = net.likelihood.log_prob(net.run(values, x), y)
        loss = log_q - net.log_prior(values, net.context(n_data)) - scale * log_lik
        flipped = flipped_log_liks(net, values, x, y, self.replicas)
        for s, ll in zip(net.gates, flipped, strict=True):
            delta = (2 * values[s.name] - 1) * (ll - log_lik.detach()) * scale
            theta = guide.gate_probs[key(s.name)]
            loss = loss + ((theta - theta.detach()) * delta).sum()
        return loss


# --- part 1: exact, by enumeration ------------------------------------------------------------


@contextlib.contextmanager
def forced_gates(zs: list[Tensor]) -> Iterator[None]:
    """``torch.bernoulli`` returns the given gate values, one per call, in site order."""
    queue = list(zs)

    def fake(p: Tensor, *args, **kwargs) -> Tensor:
        z = queue.pop(0)
        assert z.shape == p.shape
        return z.to(p)

    with mock.patch.object(torch, "bernoulli", fake):
        yield
    assert not queue


def thetas_of(guide) -> list[Tensor]:
    return list(guide.gate_probs.values())


def per_config(estimator, net, guide, x, y, n_data, configs, sizes) -> tuple[Tensor, Tensor]:
    losses, grads = [], []
    for z in configs:
        with forced_gates(list(torch.split(z, sizes))):
            loss = estimator(net, guide, x, y, n_data)
        losses.append(loss.detach())
        grads.append(torch.cat(torch.autograd.grad(loss, thetas_of(guide))))
    return torch.stack(losses), torch.stack(grads)


def exact_gradient(net, guide, x, y, n_data, configs, sizes) -> tuple[Tensor, Tensor]:
    """The negative ELBO summed over every configuration, and its gradient in θ."""
    theta = torch.cat(thetas_of(guide))
    values, log_q = guide.rsample()
    total = log_q - net.log_prior(values, net.context(n_data))
    for z in configs:
        w = torch.where(z > 0, theta, 1 - theta).prod()
        gates = dict(zip([s.name for s in net.gates], torch.split(z, sizes), strict=True))
        out = net.run(dict(values, **gates), x)
        total = total - w * (n_data / x.shape[0]) * net.likelihood.log_prob(out, y)
    return total.detach(), torch.cat(torch.autograd.grad(total, thetas_of(guide)))


def local_from_table(losses: Tensor, configs: Tensor, gammas: Tensor) -> Tensor:
    """The local-expectation gradient at every configuration, from the fused losses of all
    configurations (which differ from ``f(z)`` by a constant under a MAP guide)."""
    k = configs.shape[1]
    weights = 2 ** torch.arange(k - 1, -1, -1)
    index = (configs.long() * weights).sum(1)
    lookup = torch.empty_like(losses)
    lookup[index] = losses
    grads = torch.empty_like(configs)
    for u in range(k):
        on = (index | weights[u]).long()
        off = (index & ~weights[u]).long()
        grads[:, u] = lookup[on] - lookup[off] + gammas[u]
    return grads


def moments(grads: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    mean = (q[:, None] * grads).sum(0)
    return mean, (q[:, None] * (grads - mean).square()).sum(0)


def mlp_net(widths: tuple[int, ...], trained: bool, data) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    n_in = 8
    for w in widths:
        layers += [nn.Linear(n_in, w), nn.ReLU()]
        n_in = w
    module = nn.Sequential(*layers, nn.Linear(n_in, 3)).to(F64)
    if trained:  # the dense net, full-batch Adam
        opt = torch.optim.Adam(module.parameters(), lr=1e-2)
        x, y = data.train.x.to(F64), data.train.y
        for _ in range(300):
            opt.zero_grad()
            nn.functional.cross_entropy(module(x), y).backward()
            opt.step()
    return module


def theta_setting(name: str, k: int) -> Tensor:
    g = torch.Generator().manual_seed(k)
    if name == "0.5":
        return torch.full((k,), 0.5, dtype=F64)
    if name == "0.9":
        return torch.full((k,), 0.9, dtype=F64)
    if name == "spread":
        return 0.05 + 0.9 * torch.rand(k, generator=g, dtype=F64)
    if name == "near-vertex":
        return torch.where(torch.rand(k, generator=g) < 0.5, 0.03, 0.97).to(F64)
    raise ValueError(name)


def exact_case(widths, trained, theta_name, data, trace_max_k) -> dict:
    module = mlp_net(widths, trained, data)
    net = bp.sparsify(module, UnitGates(gamma=GAMMA))
    guide = MAP(net)
    sizes = [s.shape[0] for s in net.gates]
    k = sum(sizes)
    theta = theta_setting(theta_name, k)
    with torch.no_grad():
        for p, t in zip(thetas_of(guide), torch.split(theta, sizes), strict=True):
            p.copy_(t)
    x, y, n_data = data.train.x[:32].to(F64), data.train.y[:32], len(data.train)
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)), dtype=F64)
    q = torch.where(configs > 0, theta, 1 - theta).prod(1)
    exact_loss, exact = exact_gradient(net, guide, x, y, n_data, configs, sizes)
    losses, st = per_config(FusedELBO(), net, guide, x, y, n_data, configs, sizes)
    gammas = torch.cat([torch.tensor(s.meta["gamma"], dtype=F64) for s in net.gates])
    estimators = {"straight_through": st, "local": local_from_table(losses, configs, gammas)}
    if k <= trace_max_k:
        estimators["score_function"] = per_config(
            TraceELBO(), net, guide, x, y, n_data, configs, sizes
        )[1]
    norm = float(exact.norm())
    st_mean, _ = moments(st, q)
    # 20,000 draws of the library's estimator: a count-weighted average of its values
    gen = torch.Generator().manual_seed(1)
    draws = torch.bernoulli(theta.expand(N_DRAWS, k), generator=gen)
    index = (draws.long() * 2 ** torch.arange(k - 1, -1, -1)).sum(1)
    mc = st[index]
    mc_mean, mc_se = mc.mean(0), mc.std(0) / math.sqrt(N_DRAWS)
    row = {
        "widths": list(widths),
        "K": k,
        "trained": trained,
        "theta": theta_name,
        "exact_grad_norm": norm,
        "loss_check": abs(float((q * losses).sum() - exact_loss)),
        "st_relative_bias": float((st_mean - exact).norm()) / norm,
        "st_cosine": float(torch.nn.functional.cosine_similarity(st_mean, exact, dim=0)),
        "st_sign_agreement": float((torch.sign(st_mean) == torch.sign(exact)).double().mean()),
        "st_relative_bias_mc": float((mc_mean - exact).norm()) / norm,
        "mc_noise_floor": float(mc_se.norm()) / norm,
        "relative_sd": {},
        "unbiased_check": {},
    }
    for name, grads in estimators.items():
        mean, var = moments(grads, q)
        row["relative_sd"][name] = math.sqrt(float(var.sum())) / norm
        if name != "straight_through":
            row["unbiased_check"][name] = float((mean - exact).abs().max())
    for name, err in row["unbiased_check"].items():
        assert err < 1e-8 * (1 + norm), (name, err)
    return row


# --- part 2: LeNet-5 -------------------------------------------------------------------------


def load_data():
    try:
        from bayesprune.data import fashion_mnist

        return fashion_mnist(), "fashion-mnist"
    except (FileNotFoundError, OSError, ValueError):
        return synthetic_classification(
            2048, 0, 0, input_shape=(1, 28, 28), n_classes=10, seed=0
        ), "synthetic 28x28"


def gate_grad(estimator, net, guide, x, y, n_data) -> Tensor:
    loss = estimator(net, guide, x, y, n_data)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, thetas_of(guide))])


def lenet_bias(data, width: float, epochs: int, st_draws: int, local_draws: int) -> dict:
    torch.manual_seed(0)
    net = bp.sparsify(build("lenet5", width=width), UnitGates(gamma=30.0))
    guide = MAP(net)
    if epochs:
        bp.fit(net, data, guide, epochs=epochs, role_lr={"gate": 1e-2}, progress=False)
    x, y, n_data = data.train.x[:128], data.train.y[:128], len(data.train)
    torch.manual_seed(1)
    st = torch.stack([gate_grad(FusedELBO(), net, guide, x, y, n_data) for _ in range(st_draws)])
    t0 = time.perf_counter()
    local = torch.stack(
        [gate_grad(LocalExpectationELBO(), net, guide, x, y, n_data) for _ in range(local_draws)]
    )
    local_seconds = (time.perf_counter() - t0) / local_draws
    theta = torch.cat([p.detach() for p in thetas_of(guide)])
    ref = local.mean(0)
    norm = float(ref.norm())
    se = (st.var(0) / st_draws + local.var(0) / local_draws).sqrt()
    interior = (theta > 0) & (theta < 1)
    var_st, var_local = st.var(0), local.var(0)
    return {
        "width": width,
        "units": [s.shape[0] for s in net.gates],
        "epochs_of_gated_fit": epochs,
        "theta_interior_fraction": float(interior.float().mean()),
        "theta_quartiles": [float(v) for v in theta.quantile(torch.tensor([0.25, 0.5, 0.75]))],
        "draws": {"straight_through": st_draws, "local": local_draws},
        "st_relative_bias": float((st.mean(0) - ref).norm()) / norm,
        "noise_floor": float(se.norm()) / norm,
        "st_cosine": float(torch.nn.functional.cosine_similarity(st.mean(0), ref, dim=0)),
        "st_sign_agreement": float((torch.sign(st.mean(0)) == torch.sign(ref)).float().mean()),
        "relative_sd": {
            "straight_through": float(var_st.sum().sqrt()) / norm,
            "local": float(var_local.sum().sqrt()) / norm,
        },
        "local_seconds_per_draw": local_seconds,
    }


def lenet_timing(data, repeats: int, local_repeats: int) -> dict:
    torch.manual_seed(0)
    net = bp.sparsify(build("lenet5"), UnitGates(gamma=30.0))
    guide = MAP(net)
    x, y, n_data = data.train.x[:128], data.train.y[:128], len(data.train)
    out = {"units": [s.shape[0] for s in net.gates], "batch": 128}
    for est, n in [(FusedELBO(), repeats), (LocalExpectationELBO(), local_repeats)]:
        est(net, guide, x, y, n_data).backward()  # warm-up
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            est(net, guide, x, y, n_data).backward()
            times.append(time.perf_counter() - t0)
        out[f"{est.name}_seconds_per_step"] = statistics.median(times)
    out["local_over_fused"] = out["local_seconds_per_step"] / out["fused_seconds_per_step"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--trace-max-k", type=int, default=8, help="score function up to K gates")
    ap.add_argument("--lenet-draws", type=int, default=40, help="local-expectation draws")
    ap.add_argument("--st-draws", type=int, default=1000, help="straight-through draws")
    ap.add_argument("--skip-lenet", action="store_true")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "gate_gradient_bias.json"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    small = synthetic_classification(512, 0, 0, input_shape=(8,), n_classes=3, seed=0)
    rows = []
    for widths in [(4,), (8,), (12,), (6, 6)]:
        for trained in (False, True):
            for theta_name in ("0.5", "0.9", "spread", "near-vertex"):
                rows.append(exact_case(widths, trained, theta_name, small, args.trace_max_k))
    report: dict = {
        "args": vars(args) | {"out": str(args.out)},
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "exact": rows,
    }
    print(
        "| widths | trained | θ | ‖∇‖ | ST rel. bias | (20k draws ± floor) | cosine | signs | rel. sd ST / score fn / local |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sd = r["relative_sd"]
        sf = f"{sd['score_function']:.2f}" if "score_function" in sd else "–"
        print(
            f"| {'-'.join(map(str, r['widths']))} | {'yes' if r['trained'] else 'no'} | {r['theta']} "
            f"| {r['exact_grad_norm']:.3g} | {r['st_relative_bias']:.3f} "
            f"| {r['st_relative_bias_mc']:.3f} ± {r['mc_noise_floor']:.3f} | {r['st_cosine']:.3f} "
            f"| {r['st_sign_agreement']:.2f} | {sd['straight_through']:.2f} / {sf} / {sd['local']:.2f} |"
        )
    if not args.skip_lenet:
        data, source = load_data()
        report["lenet_data"] = source
        report["lenet_bias"] = [
            lenet_bias(data, 0.25, epochs, args.st_draws, args.lenet_draws) for epochs in (0, 1)
        ]
        report["lenet_timing"] = lenet_timing(data, repeats=10, local_repeats=2)
        print(f"\nLeNet-5 ({source}), width 0.25, batch 128, γ = 30:")
        print(
            "| gated fit epochs | θ interior | ST rel. bias ± floor | cosine | signs | rel. sd ST / local |"
        )
        print("|---|---|---|---|---|---|")
        for r in report["lenet_bias"]:
            sd = r["relative_sd"]
            print(
                f"| {r['epochs_of_gated_fit']} | {r['theta_interior_fraction']:.2f} "
                f"| {r['st_relative_bias']:.3f} ± {r['noise_floor']:.3f} | {r['st_cosine']:.3f} "
                f"| {r['st_sign_agreement']:.2f} | {sd['straight_through']:.2f} / {sd['local']:.2f} |"
            )
        t = report["lenet_timing"]
        print(
            f"\nLeNet-5 width 1 ({t['units']} gates), one step (loss + backward), batch 128: "
            f"fused {t['fused_seconds_per_step'] * 1e3:.0f} ms, local expectation "
            f"{t['local_seconds_per_step']:.1f} s ({t['local_over_fused']:.0f}×)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
