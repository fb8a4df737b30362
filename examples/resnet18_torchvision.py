"""Unit gates on a torchvision ResNet-18: prune filters, get a physically smaller network.

    python examples/resnet18_torchvision.py                     # Fashion-MNIST at 32x32, 2 epochs
    BAYESPRUNE_SMOKE=1 python examples/resnet18_torchvision.py  # synthetic data, seconds

Every filter of the inner convolution of each residual block (``layerN.M.conv1``)
gets a Bernoulli gate with a price; SVI learns which gates to close, and closed
filters are cut out of the network while it trains (``remove_dead=True``). The
block's output convolutions are left alone: their channels are tied together by
the residual sums. ``extract`` removes the filters whose gate is closed and the
matching input channels of the next convolution.
"""

import os
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import bayesprune as bp
from bayesprune.data import Dataset, Split, fashion_mnist, synthetic_classification
from bayesprune.guides import MAP
from bayesprune.metrics import summarize
from bayesprune.priors import UnitGates
from bayesprune.pruning import masked_copy

SMOKE = os.environ.get("BAYESPRUNE_SMOKE") == "1"
epochs = 1 if SMOKE else 2
device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)

# 1. Data: Fashion-MNIST padded from 28x28 to 32x32 (with its background value).
if SMOKE:
    data = synthetic_classification(64, 32, 32, input_shape=(1, 16, 16), n_classes=10)
else:
    fm = fashion_mnist()
    background = float(fm.train.x.min())

    def pad(s: Split) -> Split:
        return Split(F.pad(s.x, (2, 2, 2, 2), value=background), s.y)

    data = Dataset(pad(fm.train), pad(fm.val), pad(fm.test), n_classes=10, name="fashion-32")

# 2. A torchvision ResNet-18, random init (nothing downloaded), one input channel.
model = torchvision.models.resnet18(weights=None, num_classes=10)
model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
example = data.train.x[:1]
dense = summarize(model.eval(), example, measure=False)
gated = [f"layer{i}.{j}.conv1" for i in (1, 2, 3, 4) for j in (0, 1)]
width = {name: model.get_submodule(name).out_channels for name in gated}

# 3. Gates on the inner conv of every block (a BatchNorm follows: the gate sits after it).
# gamma: the mean price of a filter in nats over the training set (a tiny set: tiny prices)
prior = UnitGates(gamma=0.05 if SMOKE else 1.0, cost="flops")  # FLOPs-aware prices
net = bp.sparsify(model, prior, layers=gated, example_input=example)
t0 = time.perf_counter()
result = bp.fit(
    net,
    data,
    MAP(net),
    epochs=epochs,
    batch_size=32 if SMOKE else 128,
    role_lr={"gate": 0.5 if SMOKE else 3e-2},  # gate probabilities move fast
    schedule="cosine",  # lets the gates settle at 0 or 1 by the end
    remove_dead=True,  # cut closed filters out after every epoch
    device=device,
    progress=not SMOKE,
)
seconds = time.perf_counter() - t0

# 4. Collapse (keep filters whose gate probability is above 1/2) and extract.
net.module.cpu()
keep = bp.collapse(net, result.guide, threshold=0.5)
example = example.cpu()
small = bp.extract(net, keep, example_input=example).eval()
masked = masked_copy(net, keep, example_input=example).eval()  # same shapes, gates baked in

# 5. Before -> after, and the extracted network against the masked (collapsed) one.
test = data.test.to("cpu")
with torch.no_grad():
    x = test.x[:256]
    out_small, out_masked = small(x), masked(x)
    diff = (out_small - out_masked).abs().max().item()
    matches = torch.allclose(out_small, out_masked, rtol=1e-4, atol=1e-5)
    accuracy = sum(
        (small(test.x[i : i + 512]).argmax(-1) == test.y[i : i + 512]).sum().item()
        for i in range(0, len(test), 512)
    ) / len(test)
after = summarize(small, example, measure=False)
kept = ", ".join(f"{name} {k.n_kept}/{width[name]}" for name, k in keep.items())
print(f"fit: {epochs} epoch(s) in {seconds:.1f}s on {device}")
print(f"filters kept: {kept}")
print(f"params: {dense['params']:,} -> {after['params']:,}")
print(f"FLOPs per example: {dense['flops']:,} -> {after['flops']:,}")
print(f"test accuracy of the extracted network: {100 * accuracy:.2f}%")
print(f"extracted matches masked: {matches} (max |diff| {diff:.1e} on {len(x)} test images)")
