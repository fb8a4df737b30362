"""The mean-field guide's softplus equals torch's, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bayesprune.guides.softplus import softplus


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-14), (torch.float32, 2e-6)])
def test_equals_torch_softplus(dtype, rtol):
    rho = torch.cat([torch.linspace(-80, 15, 20001), torch.tensor([0.0, -1e4])]).to(dtype)
    got, want = softplus(rho), F.softplus(rho)
    torch.testing.assert_close(got, want, rtol=rtol, atol=0.0)


def test_large_arguments_and_underflow():
    rho = torch.tensor([20.0, 50.0, 1e4, -200.0])
    torch.testing.assert_close(softplus(rho), torch.tensor([20.0, 50.0, 1e4, 0.0]))
    assert torch.isfinite(softplus(rho)).all()


def test_gradient_is_sigmoid():
    rho = (10 * torch.randn(200, dtype=torch.float64)).requires_grad_()
    (g,) = torch.autograd.grad(softplus(rho).sum(), rho)
    torch.testing.assert_close(g, torch.sigmoid(rho.detach()))
    assert torch.autograd.gradcheck(softplus, (rho[:20].detach().clone().requires_grad_(),))
