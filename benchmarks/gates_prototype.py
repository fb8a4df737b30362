"""The plain-PyTorch gate prototype of ``shared/REFERENCE.md`` side by side with the product.

Prototype (no bayesprune in its training loop; the zoo builds the same architecture and
``fashion_mnist()`` gives the same data): a gate θ_u on every conv filter / hidden unit
(every Linear/Conv but the output layer), θ initialised 0.9 and projected to [0, 1] after
every step (Adam lr 1e-2 on θ); the forward multiplies each unit's output by a hard draw
z ~ Bernoulli(θ) with a straight-through gradient (∂z/∂θ = 1); loss per example
``CE + γ Σθ / N + Σw² / (2N)`` (a N(0, 1) prior on the weights); weights at Adam lr 1e-3,
batch 128; units with θ = 0 sliced out after every epoch; at test time hard gates θ > 0.5.

Product: ``sparsify(net, UnitGates(γ))``, ``fit(..., role_lr={"gate": 1e-2},
remove_dead=True)``, ``collapse``, ``extract``, with the same optimizer settings.

Each run prints units kept, test and validation accuracy, FLOPs, and the fraction of gates at
exactly 0 or 1. Variants switch one thing at a time (``--proto`` / ``--product``):

    python benchmarks/gates_prototype.py --nets lenet300 --gammas 10 30 --epochs 10 \
        --proto base z=example prior=gated --product base z=example

Prototype options (``key=value``, comma-separated; ``base`` is the defaults):
  ``z=batch|example`` one gate draw per mini-batch (default) or per example;
  ``prior=all|gated|bias|none`` Σw² over every weight (default), only the gated layers'
  weights (the product's), every weight and bias, or none;
  ``adam=slice|reset`` removal slices Adam's state (default) or rebuilds the optimizer;
  ``gate=pre|post`` the gate multiplies the layer output before (default) or after the ReLU;
  ``glr=<float>`` gate learning rate; ``sched=none|cosine``.
Product options (monkeypatched for the run): ``z=batch|example``, ``gate=pre|post``, ``prior=gated|all`` (``all`` adds Σw²/2 of the
output layer's weight, as the prototype does), ``glr=<float>``, ``sched=none|cosine``.

Writes ``benchmarks/results/gates_prototype.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bayesprune.data import fashion_mnist
from bayesprune.metrics import count_flops
from bayesprune.zoo import build

torch.set_num_threads(1)

#: gated layer -> (consumer layer, input features per unit of the consumer)
GATED = {
    "lenet300": {"fc1": ("fc2", 1), "fc2": ("fc3", 1)},
    "lenet5": {"conv1": ("conv2", 1), "conv2": ("fc1", 16), "fc1": ("fc2", 1)},
}


# ----------------------------------------------------------------------------------------
# the prototype: plain PyTorch
# ----------------------------------------------------------------------------------------
def _slice_param(p: nn.Parameter, idx: torch.Tensor, dim: int, per: int) -> nn.Parameter:
    if per > 1:  # consumer of a conv flattened into a Linear: `per` features per channel
        idx = (idx[:, None] * per + torch.arange(per)).flatten()
    return nn.Parameter(p.detach().index_select(dim, idx).clone())


def _times(t: torch.Tensor, z: torch.Tensor, per: int) -> torch.Tensor:
    """``t`` (batch, units, ...) times the gates ``z`` (units,) or (batch, units); ``per``
    features per unit when ``t`` is a conv output flattened into a Linear's input."""
    if per > 1:
        z = z.repeat_interleave(per, dim=-1)
    lead = [-1] if z.dim() == 1 else list(z.shape)
    return t * z.reshape(lead + [1] * (t.dim() - 2))


def prototype(name: str, data, gamma: float, epochs: int, seed: int, opts: dict) -> dict:
    """Train the REFERENCE.md prototype; returns the kept widths, accuracies and history."""
    torch.manual_seed(seed)
    net = build(name)
    gated = GATED[name]
    theta = {k: nn.Parameter(torch.full((getattr(net, k).weight.shape[0],), 0.9)) for k in gated}
    x, y = data.train.x, data.train.y
    n, bs = x.shape[0], 128
    steps = epochs * math.ceil(n / bs)
    per_example = opts.get("z", "batch") == "example"
    post = opts.get("gate", "pre") == "post"
    mode = {"gate": None}  # None: training draws; "hard": θ > 0.5

    def draw(layer: str, batch: int, like: torch.Tensor) -> torch.Tensor:
        th = theta[layer]
        if mode["gate"] == "hard":
            return (th > 0.5).to(like.dtype)
        shape = (batch, th.numel()) if per_example else (th.numel(),)
        return torch.bernoulli(th.detach().clamp(0, 1).expand(shape)) + th - th.detach()

    for k, (cons, per) in gated.items():
        if post:  # gate the consumer's input: after the ReLU (and the max-pool)
            getattr(net, cons).register_forward_pre_hook(
                lambda m, inp, k=k, per=per: (_times(inp[0], draw(k, len(inp[0]), inp[0]), per),)
            )
        else:  # gate the layer's output, before its ReLU (the product's placement)
            getattr(net, k).register_forward_hook(
                lambda m, inp, out, k=k: _times(out, draw(k, len(out), out), 1)
            )

    def prior_params():
        kind = opts.get("prior", "all")
        if kind == "none":
            return []
        if kind == "gated":
            return [getattr(net, k).weight for k in gated]
        return [p for nm, p in net.named_parameters() if kind == "bias" or nm.endswith("weight")]

    def make_opt():
        glr = float(opts.get("glr", 1e-2))
        return torch.optim.Adam(
            [{"params": list(net.parameters())}, {"params": list(theta.values()), "lr": glr}],
            lr=1e-3,
        )

    opt = make_opt()
    base_lrs = [g["lr"] for g in opt.param_groups]
    cosine = opts.get("sched", "none") == "cosine"
    g = torch.Generator().manual_seed(seed)
    hist, step = [], 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            out = net(x[idx])
            loss = F.cross_entropy(out, y[idx])
            loss = loss + gamma * sum(t.sum() for t in theta.values()) / n
            loss = loss + sum(p.square().sum() for p in prior_params()) / (2 * n)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for t in theta.values():
                    t.clamp_(0.0, 1.0)
            step += 1
            if cosine:
                for grp, lr0 in zip(opt.param_groups, base_lrs, strict=True):
                    grp["lr"] = 0.5 * lr0 * (1 + math.cos(math.pi * step / steps))
        # removal: slice units with θ == 0 out of the layer, its gate and its consumer
        old = {id(p): p for p in [*net.parameters(), *theta.values()]}
        state = {id(p): opt.state.get(p, {}) for p in old.values()}
        new_of = {}  # id(new param) -> (id(old param), dim, idx, per)
        for k, (cons, per) in gated.items():
            keep = (theta[k].detach() != 0).nonzero().flatten()
            if keep.numel() == 0:
                keep = torch.zeros(1, dtype=torch.long)
            if keep.numel() == theta[k].numel():
                continue
            lay, nxt = getattr(net, k), getattr(net, cons)
            for mod, attr, dim, pp, src in (
                (lay, "weight", 0, 1, lay),
                (lay, "bias", 0, 1, lay),
                (nxt, "weight", 1, per, nxt),
            ):
                p_old = getattr(src, attr)
                p_new = _slice_param(p_old, keep, dim, pp)
                setattr(mod, attr, p_new)
                new_of[id(p_new)] = (id(p_old), dim, keep, pp)
            t_new = _slice_param(theta[k], keep, 0, 1)
            new_of[id(t_new)] = (id(theta[k]), 0, keep, 1)
            theta[k] = t_new
            if isinstance(lay, nn.Conv2d):
                lay.out_channels, nxt.in_channels = keep.numel(), keep.numel()
            else:
                lay.out_features = keep.numel()
                nxt.in_features = nxt.weight.shape[1]
        if new_of:
            lrs = [grp["lr"] for grp in opt.param_groups]
            opt = make_opt()
            for grp, lr in zip(opt.param_groups, lrs, strict=True):
                grp["lr"] = lr
            if opts.get("adam", "slice") == "slice":
                for grp in opt.param_groups:
                    for p in grp["params"]:
                        src_id, dim, keep, pp = new_of.get(id(p), (id(p), None, None, 1))
                        st = state.get(src_id, {})
                        if not st:
                            continue
                        if dim is None:
                            opt.state[p] = st
                            continue
                        if pp > 1:
                            keep = (keep[:, None] * pp + torch.arange(pp)).flatten()
                        opt.state[p] = {
                            k2: (v.index_select(dim, keep).clone() if v.dim() > 0 else v.clone())
                            for k2, v in st.items()
                        }
        hist.append(
            {
                "seconds": time.perf_counter() - t0,
                "units": {k: int((t > 0).sum()) for k, t in theta.items()},
                "val": _acc_hard(net, mode, data.val.x, data.val.y),
            }
        )
    mode["gate"] = "hard"
    test, val = _acc_hard(net, mode, data.test.x, data.test.y), hist[-1]["val"]
    thetas = torch.cat([t.detach() for t in theta.values()])
    widths = {k: int((t > 0.5).sum()) for k, t in theta.items()}
    n0 = sum(getattr(build(name), k).weight.shape[0] for k in gated)
    return {
        "units": widths,
        "test": test,
        "val": val,
        "test_soft": _acc_soft(net, mode, theta, data.test.x, data.test.y),
        "flops": _flops(name, widths),
        "vertex_fraction": float(((thetas == 0) | (thetas == 1)).float().mean()),
        "vertex_fraction_all": _vertex_all(thetas, n0),
        "history": hist,
    }


@torch.no_grad()
def _acc_hard(net, mode, x, y) -> float:
    was, mode["gate"] = mode["gate"], "hard"
    net.eval()
    acc = sum(
        int((net(x[i : i + 2048]).argmax(-1) == y[i : i + 2048]).sum())
        for i in range(0, len(x), 2048)
    )
    mode["gate"] = was
    return acc / len(x)


@torch.no_grad()
def _acc_soft(net, mode, theta, x, y) -> float:
    """Accuracy with the mean gate E[z] = θ (the posterior mean instead of its median)."""
    was = mode["gate"]
    mode["gate"] = "hard"
    saved = {k: t.detach().clone() for k, t in theta.items()}
    # every hard gate open (θ := 1), then a second hook multiplies each unit by its θ
    handles = [
        getattr(net, k).register_forward_hook(
            lambda m, i, o, t=saved[k]: o * t.reshape([-1] + [1] * (o.dim() - 2))
        )
        for k in theta
    ]
    for t in theta.values():
        t.data.fill_(1.0)
    try:
        acc = _acc_hard(net, mode, x, y)
    finally:
        for h in handles:
            h.remove()
        for k, t in theta.items():
            t.data.copy_(saved[k])
        mode["gate"] = was
    return acc


def _vertex_all(thetas: torch.Tensor, n_original: int) -> float:
    """Gates exactly at 0 or 1 over every original unit, the removed ones counted at 0 (how
    REFERENCE.md's 93-98 % reads)."""
    at = int(((thetas == 0) | (thetas == 1)).sum()) + n_original - thetas.numel()
    return at / n_original


def _flops(name: str, widths: dict) -> int:
    w = list(widths.values())
    small = build(name, hidden=w) if name == "lenet300" else build(name, channels=w)
    return int(count_flops(small, small.example_input(1))["flops"])


# ----------------------------------------------------------------------------------------
# the product, with optional monkeypatches that switch one thing at a time
# ----------------------------------------------------------------------------------------
def _gate_patches(name: str, per_example: bool, post: bool):
    """Switch the product's gate to one draw per example (drawn where the gate is applied,
    instead of once per batch by the guide) and/or to multiply the unit's activation
    *after* its ReLU (and max-pool): the gate then scales the consumer's input, as in the
    prototype's ``gate=post``. In value the same network; the straight-through slope at a
    closed gate changes from 0 (``relu'(0) = 0`` before the ReLU) to ``⟨∂f/∂h, relu(a)⟩``."""
    import bayesprune.guides.base as gb
    import bayesprune.nn.bayesian_net as bn

    patches = []
    if per_example:
        patches.append((gb, "_straight_through", lambda theta: theta))  # drawn when applied

    def gates_for(g: torch.Tensor, t: torch.Tensor, training: bool) -> torch.Tensor:
        if per_example and training:
            shape = (t.shape[0], g.numel())
            return torch.bernoulli(g.detach().clamp(0, 1).expand(shape)) + g - g.detach()
        return g

    def run(self, values, x):
        handles = []
        try:
            for s in self.gates:
                if post:
                    cons, per = GATED[name][s.layer]
                    handles.append(
                        self.module.get_submodule(cons).register_forward_pre_hook(
                            lambda m, inp, g=values[s.name], per=per: (
                                _times(inp[0], gates_for(g, inp[0], m.training), per),
                            )
                        )
                    )
                else:
                    handles.append(
                        self.module.get_submodule(s.layer).register_forward_hook(
                            lambda m, inp, out, g=values[s.name]: _times(
                                out, gates_for(g, out, m.training), 1
                            )
                        )
                    )
            with bn._swapped(self.module, {s.replaces: values[s.name] for s in self.replacing}):
                return self.module(x)
        finally:
            for h in handles:
                h.remove()

    patches.append((bn.BayesianNet, "run", run))
    return patches


def _prior_all_patch():
    """Add Σw²/2 of the ungated (output) layer's weight to the fused loss, as the prototype."""
    import bayesprune.inference.losses as lo

    orig = lo.FusedELBO.__call__

    def call(self, net, guide, x, y, n_data):
        extra = sum(
            p.square().sum() / 2
            for nm, p in net.deterministic_parameters()
            if nm.endswith("weight")
        )
        return orig(self, net, guide, x, y, n_data) + extra

    return [(lo.FusedELBO, "__call__", call)]


def product(name: str, data, gamma: float, epochs: int, seed: int, opts: dict) -> dict:
    import bayesprune as bp
    from bayesprune.guides import MAP
    from bayesprune.methods import accuracy
    from bayesprune.priors import UnitGates
    from bayesprune.priors.gates import probs_key

    patches = []
    per_example, post = opts.get("z", "batch") == "example", opts.get("gate", "pre") == "post"
    if per_example or post:
        patches += _gate_patches(name, per_example, post)
    if opts.get("prior", "gated") == "all":
        patches += _prior_all_patch()
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    for obj, attr, new in patches:
        setattr(obj, attr, new)
    try:
        torch.manual_seed(seed)
        net = bp.sparsify(build(name), UnitGates(gamma))
        guide = MAP(net)
        sched = opts.get("sched", "none")
        res = bp.fit(
            net,
            data,
            guide,
            epochs=epochs,
            seed=seed,
            lr=1e-3,
            role_lr={"gate": float(opts.get("glr", 1e-2))},
            schedule=None if sched == "none" else sched,
            remove_dead=True,
            progress=False,
        )
    finally:
        for obj, attr, old in saved:
            setattr(obj, attr, old)
    keep = bp.collapse(net, guide)
    small = bp.extract(net, keep).eval()
    point = guide.point()
    soft = dict(point)
    for s in net.gates:
        soft[s.name] = point[probs_key(s.name)]
    out = torch.cat([net.predict(soft, data.test.x[i : i + 2048]) for i in range(0, 10000, 2048)])
    thetas = torch.cat([v for k, v in point.items() if k.endswith("#probs")])
    widths = {n: int(ks.n_kept) for n, ks in keep.items()}
    return {
        "units": widths,
        "test": accuracy(small, data.test.x, data.test.y),
        "val": accuracy(small, data.val.x, data.val.y),
        "test_soft": float((out.argmax(-1) == data.test.y).float().mean()),
        "flops": int(count_flops(small, data.test.x[:1])["flops"]),
        "vertex_fraction": float(((thetas == 0) | (thetas == 1)).float().mean()),
        "vertex_fraction_all": _vertex_all(
            thetas, sum(build(name).get_submodule(s.layer).weight.shape[0] for s in net.gates)
        ),
        "history": [
            {k: h.get(k) for k in ("seconds", "units", "val_acc", "loss")} for h in res.history
        ],
    }


def _parse(spec: str) -> dict:
    if spec == "base":
        return {}
    return dict(kv.split("=", 1) for kv in spec.split(","))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=["lenet300"])
    ap.add_argument("--gammas", nargs="+", type=float, default=[30.0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--proto", nargs="*", default=["base"], help="prototype variants")
    ap.add_argument("--product", nargs="*", default=["base"], help="product variants")
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "gates_prototype.json"
    )
    args = ap.parse_args()
    data = fashion_mnist()
    rows = []
    if args.out.exists():
        rows = json.loads(args.out.read_text()).get("runs", [])
    print(
        "| net | γ | who | variant | units kept | test | val | test (E[z]) | FLOPs | θ at 0/1: alive / all | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.nets:
        for gamma in args.gammas:
            jobs = [("prototype", v, prototype) for v in args.proto]
            jobs += [("product", v, product) for v in args.product]
            for who, variant, fn in jobs:
                t0 = time.perf_counter()
                r = fn(name, data, gamma, args.epochs, args.seed, _parse(variant))
                r |= {
                    "net": name,
                    "gamma": gamma,
                    "who": who,
                    "variant": variant,
                    "epochs": args.epochs,
                    "seed": args.seed,
                    "seconds": time.perf_counter() - t0,
                }
                rows.append(r)
                print(
                    f"| {name} | {gamma:g} | {who} | {variant} | "
                    f"{'-'.join(str(v) for v in r['units'].values())} | {100 * r['test']:.2f}% | "
                    f"{100 * r['val']:.2f}% | {100 * r['test_soft']:.2f}% | {r['flops']:,} | "
                    f"{100 * r['vertex_fraction']:.0f}% / {100 * r['vertex_fraction_all']:.0f}% | "
                    f"{r['seconds']:.0f} |",
                    flush=True,
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
