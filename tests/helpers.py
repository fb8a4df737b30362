"""Helpers shared by several test files (import them: ``from tests.helpers import run_main``)."""

from __future__ import annotations

import contextlib
import io

import torch
import torch.nn as nn
from torch import Tensor

#: the [network] and [data] sections of a tiny CLI spec: LeNet-300-100 at width 0.1 on
#: 64 synthetic 28x28 images (append [prior], [guide], [fit], [collapse])
TINY_SPEC_HEAD = """\
[network]
name = "lenet300"
width = 0.1              # 784-30-10-10

[data]
name = "synthetic"
n_train = 64
n_val = 16
n_test = 32
input_shape = [1, 28, 28]
n_classes = 10
"""


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """Run the ``bayesprune`` CLI in-process: ``(exit code, stdout, stderr)``."""
    from bayesprune.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def mlp(*widths: int) -> nn.Sequential:
    """Linear layers of the given widths with a ReLU after every one but the last (default
    8-16-3: layers ``"0"`` and ``"2"``).

    >>> [m.out_features for m in mlp(4, 6, 5, 3) if isinstance(m, nn.Linear)]
    [6, 5, 3]
    """
    widths = widths or (8, 16, 3)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def n_params(module: nn.Module) -> int:
    """Every parameter element of ``module``."""
    return sum(p.numel() for p in module.parameters())


def set_gates(guide, thetas: dict[str, list[float]]) -> None:
    """Put the gate probabilities θ of a gate guide at ``thetas`` (by layer name)."""
    from bayesprune.guides.base import key

    with torch.no_grad():
        for layer, theta in thetas.items():
            guide.gate_probs[key(f"{layer}.gate")].copy_(torch.tensor(theta))


def resnet(**kwargs) -> nn.Module:
    """The zoo's ResNet-20 at width 1/4 for 8x8 inputs (stage channels 4, 8, 16)."""
    from bayesprune.zoo import build

    return build("resnet20", width=0.25, input_size=8, **kwargs)


def mlp_bn(sizes: tuple[int, int, int, int] = (5, 6, 4, 2)) -> nn.Sequential:
    """Linear-BatchNorm-ReLU, Linear-ReLU, Linear with the given widths."""
    a, b, c, d = sizes
    return nn.Sequential(
        nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(), nn.Linear(b, c), nn.ReLU(), nn.Linear(c, d)
    )


def randomise_batchnorm(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Running statistics and affine parameters away from their defaults (with those, BN
    maps 0 to 0 and zeroing a unit or a residual branch would go untested); scales stay in
    [0.5, 1.5], so nothing is close to 0 unless it is removed. Returns ``module``."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                    m.bias.copy_(0.2 * torch.randn(n, generator=generator))
    return module


def assert_fused_equals_trace(
    net, guide, x: Tensor, y: Tensor, n_data: int, params: list[Tensor], *, seed: int, tol: float
) -> None:
    """The fused loss and Pyro's Trace_ELBO on the same draw (same seed): equal loss and
    equal gradients w.r.t. ``params``."""
    from bayesprune.inference import FusedELBO, TraceELBO

    out = {}
    for estimator in (FusedELBO(), TraceELBO()):
        torch.manual_seed(seed)
        loss = estimator(net, guide, x, y, n_data)
        out[estimator.name] = (loss.detach(), torch.autograd.grad(loss, params))
    torch.testing.assert_close(out["fused"][0], out["trace"][0], rtol=tol, atol=tol)
    for a, b in zip(out["fused"][1], out["trace"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
