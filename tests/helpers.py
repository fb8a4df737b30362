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


def mlp_bn(sizes: tuple[int, int, int, int] = (5, 6, 4, 2)) -> nn.Sequential:
    """Linear-BatchNorm-ReLU, Linear-ReLU, Linear with the given widths."""
    a, b, c, d = sizes
    return nn.Sequential(
        nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(), nn.Linear(b, c), nn.ReLU(), nn.Linear(c, d)
    )


def randomise_batchnorm(module: nn.Module) -> None:
    """Running statistics and affine parameters away from their defaults."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()


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
