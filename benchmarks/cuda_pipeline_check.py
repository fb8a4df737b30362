"""The whole pipeline on a GPU: fit (fused and trace, live removal), plain Pyro SVI and
Predictive, diagnose, inclusion-rule collapse, predict_pruning, extract, report, save and
load back. CI has no GPU; run this where one is:

    python benchmarks/cuda_pipeline_check.py [--device cuda] [--out /tmp/cuda-check]

Prints one line per stage and ends with ``cuda pipeline check: all stages passed``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO

import bayesprune as bp
from bayesprune.data import synthetic_classification
from bayesprune.export.pruned_network import save_pruned
from bayesprune.guides import MAP, MeanField
from bayesprune.priors import UnitGates
from bayesprune.zoo import build


def stage(name: str, t0: float) -> float:
    print(f"{name:<44s} ok  ({time.perf_counter() - t0:.1f} s)", flush=True)
    return time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp()) / "cuda-check")
    args = ap.parse_args()
    dev = torch.device(args.device)
    data = synthetic_classification(
        2048, 256, 512, input_shape=(1, 28, 28), n_classes=10, device=dev
    )
    t = time.perf_counter()

    net = bp.sparsify(build("lenet5"), UnitGates(gamma=8.0, cost="mixed"))
    result = bp.fit(
        net,
        data,
        MAP(net),
        epochs=2,
        device=dev,
        role_lr={"gate": 0.2},
        remove_dead=True,
        progress=False,
    )
    assert net.device.type == dev.type and result.final["units"]
    t = stage(f"fit fused, remove_dead (units {result.final['units']})", t)

    net2 = bp.sparsify(build("lenet5"), UnitGates(gamma=8.0))
    bp.fit(net2, data, MeanField(net2), epochs=1, device=dev, loss="trace", progress=False)
    t = stage("fit loss='trace', MeanField", t)

    pyro.clear_param_store()
    net3 = bp.sparsify(build("lenet5").to(dev), UnitGates(gamma=8.0))
    guide3 = MeanField(net3).to(dev)
    svi = SVI(net3.model, guide3, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    x, y = data.train.x[:128], data.train.y[:128]
    losses = [svi.step(x, y, n_data=len(data.train)) for _ in range(5)]
    draws = Predictive(net3.model, guide=guide3, num_samples=4)(x[:8], n_data=len(data.train))
    assert all(v.device.type == dev.type for v in draws.values()) and "obs" in draws
    t = stage(f"plain Pyro SVI + Predictive (loss {losses[0]:.0f} -> {losses[-1]:.0f})", t)

    idata = bp.diagnose(net, result.guide, data, num_samples=20, result=result)
    t = stage(f"diagnose (PSIS k-hat {idata.posterior.attrs['psis_khat']:.2f})", t)

    keep = bp.collapse(net, result.guide, rule="inclusion", max_risk=0.05)
    forecast = bp.predict_pruning(net, result.guide, keep, data, num_samples=8)
    small = bp.extract(net, keep)
    with torch.inference_mode():
        xt = data.test.x.to(next(small.parameters()).device)
        acc = float((small(xt).argmax(-1) == data.test.y.to(xt.device)).float().mean())
    t = stage(f"collapse/forecast/extract ({forecast.accuracy_point:.4f} vs {acc:.4f})", t)

    html = bp.report(net, result, idata, out=args.out / "report", keep=keep, extracted=small)
    t = stage(f"report ({html})", t)

    save_pruned(small, args.out / "extracted", net=net, keep=keep, input_shape=(1, 28, 28))
    back = bp.load(args.out / "extracted", device=dev)
    with torch.inference_mode():
        same = torch.allclose(back(xt[:64]), small(xt[:64]), rtol=1e-5, atol=1e-6)
    assert same
    stage("save + load back, outputs equal", t)
    print("cuda pipeline check: all stages passed")


if __name__ == "__main__":
    main()
