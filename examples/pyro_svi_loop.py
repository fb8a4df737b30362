"""Plain Pyro on a bayesprune model: your own SVI loop, Pyro's ELBO and optimizer, Predictive.

``net.model`` is an ordinary Pyro model and our guides are ordinary Pyro guides, so
Pyro's ``SVI`` trains them directly (the guide's parameters and the network's biases are
exposed to Pyro's param store). ``bayesprune.fit`` does the same with a faster fused
loss; this script shows that nothing forces you to use it.

    python examples/pyro_svi_loop.py                  # Fashion-MNIST, LeNet-300-100, 1 epoch
    BAYESPRUNE_SMOKE=1 python examples/pyro_svi_loop.py   # seconds, synthetic data
"""

import os

import pyro
import pyro.optim
import torch
from pyro.infer import SVI, Predictive, TraceGraph_ELBO

import bayesprune as bp
from bayesprune.data import fashion_mnist, synthetic_classification
from bayesprune.guides import MeanField
from bayesprune.priors import UnitGates
from bayesprune.zoo import build

smoke = os.environ.get("BAYESPRUNE_SMOKE") == "1"
torch.manual_seed(0)
pyro.clear_param_store()

if smoke:
    data = synthetic_classification(n_train=256, input_shape=(784,), n_classes=10)
else:
    data = fashion_mnist(flatten=True)
x, y = data.train.x, data.train.y
n = len(y)

# Bernoulli gates on the hidden units of LeNet-300-100, a mean-field Normal over the weights
net = bp.sparsify(build("lenet300"), UnitGates(gamma=10.0))
guide = MeanField(net, init_scale=1e-3)

# Pyro's own loop. TraceGraph_ELBO gives the discrete gates a score-function gradient with
# Pyro's variance reduction (Trace_ELBO works too; TraceMeanField_ELBO needs a guide
# without discrete sites).
svi = SVI(net.model, guide, pyro.optim.Adam({"lr": 1e-3}), TraceGraph_ELBO())
batch = 128
steps = 10 if smoke else n // batch
for step in range(steps):
    idx = torch.randint(0, n, (batch,))
    loss = svi.step(x[idx], y[idx], n_data=n)  # n_data scales the mini-batch to the data set
    if step % max(steps // 5, 1) == 0:
        print(f"step {step:4d}  -elbo/n {loss / n:.4f}")

# Posterior predictive with Pyro's Predictive: every latent site and the observation
test = data.split("test")
xs, ys = test.x[:500], test.y[:500]
draws = Predictive(net.model, guide=guide, num_samples=20)(xs, n_data=n)
print("sites drawn:", ", ".join(sorted(draws)))
vote = draws["obs"].mode(dim=0).values  # majority vote of the 20 predictive draws
units = {s.layer: int((guide.gate_theta(s) > 0.5).sum()) for s in net.gates}
print(f"gates open (θ > 0.5): {units}")
print(f"posterior predictive accuracy on {len(ys)} test images: {(vote == ys).float().mean():.2%}")
