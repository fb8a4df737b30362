"""HALO on your own ``nn.Sequential``: fit, keep 2% of the weights, extract.

    python examples/halo_sequential.py                     # Fashion-MNIST, 2 epochs
    BAYESPRUNE_SMOKE=1 python examples/halo_sequential.py  # synthetic data, seconds

HALO puts a Laplace prior with its own shrinkage scale on every weight; the MAP fit
is the paper's penalised training. ``collapse`` then keeps the 2% of weights with
the largest posterior magnitude and ``extract`` writes them into a plain copy of
your network (same shapes, 98% zeros: unstructured sparsity).
"""

import os
import time

import torch
from torch import nn

import bayesprune as bp
from bayesprune.data import fashion_mnist, synthetic_classification
from bayesprune.guides import MAP
from bayesprune.priors import HALO

SMOKE = os.environ.get("BAYESPRUNE_SMOKE") == "1"
torch.manual_seed(0)

# 1. Data: Fashion-MNIST (55k train / 5k validation / 10k test), or a tiny stand-in.
if SMOKE:
    data = synthetic_classification(256, 64, 256, input_shape=(1, 28, 28), n_classes=10)
else:
    data = fashion_mnist()  # BAYESPRUNE_DATA=<folder> if the files are elsewhere
epochs = 1 if SMOKE else 2

# 2. Your network, unchanged: any nn.Module works, names are kept.
mlp = nn.Sequential(
    nn.Flatten(),
    nn.Linear(784, 300),
    nn.ReLU(),
    nn.Linear(300, 100),
    nn.ReLU(),
    nn.Linear(100, 10),
)

# 3. Put the prior on its Linear layers and fit the posterior (MAP guide = the penalty).
net = bp.sparsify(mlp, HALO(xi=3e-5, psi=3e-5), layers=nn.Linear)
t0 = time.perf_counter()
result = bp.fit(
    net,
    data,
    MAP(net),
    epochs=epochs,
    batch_size=128,
    role_lr={"scale": 1e-2},  # the shrinkage scales move faster than the weights
    progress=not SMOKE,
)
seconds = time.perf_counter() - t0

# 4. Keep the 2% largest weights (one global ranking) and bake them into a plain module.
keep = bp.collapse(net, result.guide, keep=0.02)
small = bp.extract(net, keep)  # an nn.Sequential again, no Pyro inside

# 5. How good is it, and how much is left?
with torch.no_grad():
    accuracy = (small(data.test.x).argmax(-1) == data.test.y).float().mean().item()
kept = sum(k.n_kept for k in keep.values()) / sum(k.weight_mask.numel() for k in keep.values())
nonzero = sum(int((m.weight != 0).sum()) for m in small if isinstance(m, nn.Linear))
print(f"fit: {epochs} epoch(s) in {seconds:.1f}s, {nonzero:,} nonzero weights left")
print(f"test accuracy {100 * accuracy:.2f}% with {100 * kept:.2f}% of the weights kept")
