"""Unit gates on LeNet-5, then see why: diagnostics (ArviZ) and a report.

Bernoulli gates with the flattening hyper-prior on every conv filter and hidden unit,
prices by the FLOPs and parameters a unit costs, dead units cut out while training; then
the posterior as an ``arviz.InferenceData``, an uncertainty-aware collapse with a
forecast of what it costs, the extracted network, and ``report.html``.

    python examples/gates_lenet5_report.py                  # Fashion-MNIST, 3 epochs (~2 min on 2 cores)
    BAYESPRUNE_SMOKE=1 python examples/gates_lenet5_report.py   # seconds, synthetic data
"""

import os
import tempfile
from pathlib import Path

import arviz as az
import torch

import bayesprune as bp
from bayesprune.data import fashion_mnist, synthetic_classification
from bayesprune.guides import MAP
from bayesprune.priors import UnitGates
from bayesprune.zoo import build

smoke = os.environ.get("BAYESPRUNE_SMOKE") == "1"
torch.manual_seed(0)  # the network's initial weights (fit seeds its own data order and draws)
# the report's folder (smoke runs write to a temporary folder)
out = Path(tempfile.mkdtemp()) / "report" if smoke else Path("runs/example-gates-report")

if smoke:
    data = synthetic_classification(
        n_train=256, n_val=64, n_test=64, input_shape=(1, 28, 28), n_classes=10
    )
else:
    data = fashion_mnist()  # 55k train / 5k val / 10k test, in memory

net = bp.sparsify(build("lenet5"), UnitGates(gamma=8.0, cost="mixed"))
result = bp.fit(
    net,
    data,
    MAP(net),  # point estimates of the weights, Bernoulli(θ) over every gate
    epochs=1 if smoke else 3,
    role_lr={"gate": 1e-2},  # gate probabilities move faster than the weights
    schedule="cosine",
    remove_dead=True,  # units whose θ reaches exactly 0 are cut out after each epoch
    progress=False,
)
print("units alive after the fit:", result.final.get("units"))

# The posterior as ArviZ InferenceData: dims named after LeNet-5's own modules
# each draw is one pass over the examples diagnosed: the first 2000 test images here
idata = bp.diagnose(
    net, result.guide, data, num_samples=20 if smoke else 100, result=result, max_examples=2000
)
print(az.summary(idata, var_names=["conv1.gate_prob"], kind="stats").head(4))
print(f"PSIS k-hat: {idata.posterior.attrs['psis_khat']}")

# Keep every unit whose posterior inclusion probability is at least 5%, and forecast the
# accuracy change before extracting anything
keep = bp.collapse(net, result.guide, rule="inclusion", max_risk=0.05)
forecast = bp.predict_pruning(net, result.guide, keep, data, num_samples=8 if smoke else 32)
print(
    f"forecast: accuracy {forecast.accuracy_point:.2%} after pruning "
    f"(change {forecast.accuracy_change:+.2%} ± {forecast.accuracy_change_se:.2%} over the posterior)"
)

small = bp.extract(net, keep)
# data=: the report sets the forecast next to the extracted network's measured accuracy
path = bp.report(
    net,
    result,
    idata,
    out=out,
    extracted=small,
    keep=keep,
    data=data,
    forecast_samples=8 if smoke else 16,
    measure_latency=not smoke,
)
print(f"report: {path}")
