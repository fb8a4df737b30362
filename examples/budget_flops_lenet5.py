"""Name a budget, get that network: LeNet-5 at a tenth of its FLOPs in one fit.

    python examples/budget_flops_lenet5.py                     # Fashion-MNIST, 5 epochs
    BAYESPRUNE_SMOKE=1 python examples/budget_flops_lenet5.py  # synthetic data, seconds

Unit gates put a Bernoulli gate on every filter and hidden unit; ``cost="flops"`` prices
each gate by the multiply-accumulates its unit costs. With ``budget=Budget(flops=0.1)``
the fit adapts the prices' strength as it goes so that the posterior shrinks to 10 % of
the dense network's FLOPs, cuts it to the budget exactly late in the fit and trains the
weights of what is left. ``collapse(budget=...)`` reads that network off the posterior
(never above the budget) and ``extract`` builds it, physically smaller.
"""

import os
import time

import torch

import bayesprune as bp
from bayesprune import Budget
from bayesprune.data import fashion_mnist, synthetic_classification
from bayesprune.guides import MAP
from bayesprune.metrics import count_flops
from bayesprune.priors import UnitGates
from bayesprune.zoo import build

SMOKE = os.environ.get("BAYESPRUNE_SMOKE") == "1"
torch.manual_seed(0)

# 1. Data: Fashion-MNIST (55k train / 5k validation / 10k test), or a tiny stand-in.
if SMOKE:
    data = synthetic_classification(256, 64, 256, input_shape=(1, 28, 28), n_classes=10)
else:
    data = fashion_mnist()  # BAYESPRUNE_DATA=<folder> if the files are elsewhere
epochs = 2 if SMOKE else 5
budget = Budget(flops=0.1)

# 2. Gates priced by FLOPs on every conv filter and hidden unit (not the output layer).
dense = build("lenet5")
net = bp.sparsify(dense, UnitGates(cost="flops"))
dense_macs = count_flops(build("lenet5"), data.test.x[:1])["macs"]

# 3. One fit that ends at the budget; dead units are cut out as it goes.
t0 = time.perf_counter()
result = bp.fit(
    net,
    data,
    MAP(net),
    epochs=epochs,
    batch_size=32 if SMOKE else 128,
    role_lr={"gate": 1e-2},  # the gate probabilities move faster than the weights
    schedule="cosine",
    remove_dead=True,
    budget=budget,
    progress=not SMOKE,
)
seconds = time.perf_counter() - t0
steps = [row[1] for h in result.history for row in h["budget_trace"]]
print(
    f"fit: {epochs} epoch(s) in {seconds:.1f}s; strength multiplier {min(steps):.3g}-{max(steps):.3g}"
)

cut = result.history[-1]["budget"]["cut_report"]  # the cut the fit made, late in the fit
print(
    f"at step {cut['step']} the posterior kept {100 * cut['posterior']:.2f}% of the FLOPs; "
    f"cut to {100 * cut['final']:.2f}% ({cut['cut']} units more) and held while training on"
)

# 4. Read the network off the posterior at the budget (now exactly 0/1 gates), build it.
keep = bp.collapse(net, result.guide, budget=budget)
small = bp.extract(net, keep).eval()

# 5. What is left, and how good it is.
with torch.no_grad():
    accuracy = (small(data.test.x).argmax(-1) == data.test.y).float().mean().item()
units = "-".join(str(k.n_kept) for k in keep.values())
share = count_flops(small, data.test.x[:1])["macs"] / dense_macs
print(f"units kept {units}")
print(f"{100 * share:.2f}% of the dense FLOPs (budget 10%), test accuracy {100 * accuracy:.2f}%")
