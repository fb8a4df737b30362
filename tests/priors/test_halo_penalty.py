"""The hand-written HALO penalty equals the plain autograd expression (value and gradient)."""

from __future__ import annotations

import pytest
import torch

from bayesprune.priors.halo_penalty import halo_penalty

# (weight shape, scale shape): per-weight scales have the weight's shape, per-unit scales
# have one entry per output unit, broadcast as (units, 1, ...)
SHAPES = [
    ((4, 3), (4, 3)),
    ((2, 3, 3, 3), (2, 3, 3, 3)),
    ((5,), (5,)),
    ((4, 3), (4, 1)),
    ((2, 3, 3, 3), (2, 1, 1, 1)),
    ((3, 1), (3, 1)),  # per-unit with fan-in 1: the same shapes as per-weight
    ((6, 2, 3), (6, 1, 1)),
]
IDS = [f"{w}-{s}" for w, s in SHAPES]


def plain(theta, lam, xi, psi):
    return xi * (theta.abs() / lam.square()).sum() + psi * lam.sum()


def draw(wshape, sshape, *, zeros=False, dtype=torch.float64):
    theta = torch.randn(wshape, dtype=dtype)
    theta = theta + 0.2 * theta.sign()  # keep away from the kink for finite differences
    if zeros:
        theta.view(-1)[::2] = 0.0
    lam = torch.rand(sshape, dtype=dtype) + 0.5
    return theta.requires_grad_(), lam.requires_grad_()


@pytest.mark.parametrize(("wshape", "sshape"), SHAPES, ids=IDS)
@pytest.mark.parametrize(("xi", "psi"), [(1.0, 1.0), (3e-5 * 6e4, 0.25), (0.01, 7.0)])
def test_gradcheck(wshape, sshape, xi, psi):
    theta, lam = draw(wshape, sshape)
    assert torch.autograd.gradcheck(
        lambda t, s: halo_penalty(t, s, xi, psi), (theta, lam), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize(("wshape", "sshape"), SHAPES, ids=IDS)
@pytest.mark.parametrize("zeros", [False, True])
def test_value_and_gradient_equal_the_plain_expression(wshape, sshape, zeros):
    theta, lam = draw(wshape, sshape, zeros=zeros)
    got = halo_penalty(theta, lam, 0.3, 0.7)
    want = plain(theta, lam, 0.3, 0.7)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    g_got = torch.autograd.grad(got * 1.7, (theta, lam))  # a non-unit upstream gradient
    g_want = torch.autograd.grad(want * 1.7, (theta, lam))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(("wshape", "sshape"), SHAPES[:2] + SHAPES[3:5], ids=IDS[:2] + IDS[3:5])
def test_float32_matches_float64(wshape, sshape):
    theta, lam = draw(wshape, sshape)
    t32, l32 = theta.detach().float().requires_grad_(), lam.detach().float().requires_grad_()
    out = halo_penalty(t32, l32, 0.3, 0.7)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), plain(theta, lam, 0.3, 0.7), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("wshape", "sshape"), SHAPES, ids=IDS)
def test_zero_weights_get_zero_gradient_like_abs(wshape, sshape):
    theta = torch.zeros(wshape, dtype=torch.float64)
    theta.view(-1)[0] = -0.0
    theta.requires_grad_()
    lam = (torch.rand(sshape, dtype=torch.float64) + 0.5).requires_grad_()
    d_theta, d_lam = torch.autograd.grad(halo_penalty(theta, lam, 2.0, 0.5), (theta, lam))
    assert torch.equal(d_theta, torch.zeros_like(theta))
    (d_abs,) = torch.autograd.grad(theta.abs().sum(), theta)
    assert torch.equal(d_theta, d_abs)  # abs' subgradient at 0 is 0 too
    torch.testing.assert_close(d_lam, torch.full_like(lam, 0.5))  # only ψ Σλ remains


def test_gradient_sign_follows_the_weight():
    theta = torch.tensor([-2.0, 3.0, 0.0], dtype=torch.float64, requires_grad=True)
    lam = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    (d,) = torch.autograd.grad(halo_penalty(theta, lam, 4.0, 1.0), theta)
    torch.testing.assert_close(d, torch.tensor([-4.0, 1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("which", ["theta", "lam", "neither"])
def test_only_requested_gradients(which):
    theta, lam = draw((4, 3), (4, 1))
    theta.requires_grad_(which == "theta")
    lam.requires_grad_(which == "lam")
    out = halo_penalty(theta, lam, 0.5, 0.5)
    if which == "neither":
        assert not out.requires_grad
        return
    x = theta if which == "theta" else lam
    (g,) = torch.autograd.grad(out, x)
    (want,) = torch.autograd.grad(plain(theta, lam, 0.5, 0.5), x)
    torch.testing.assert_close(g, want)


def test_non_contiguous_weights():
    base = torch.randn(3, 5, dtype=torch.float64)
    theta = base.t().requires_grad_()  # (5, 3), not contiguous
    lam = (torch.rand(5, 1, dtype=torch.float64) + 0.5).requires_grad_()
    assert not theta.is_contiguous()
    torch.testing.assert_close(halo_penalty(theta, lam, 0.4, 0.6), plain(theta, lam, 0.4, 0.6))
    g = torch.autograd.grad(halo_penalty(theta, lam, 0.4, 0.6), (theta, lam))
    w = torch.autograd.grad(plain(theta, lam, 0.4, 0.6), (theta, lam))
    for a, b in zip(g, w, strict=True):
        torch.testing.assert_close(a, b)


def test_inputs_are_not_modified():
    theta, lam = draw((4, 3), (4, 3))
    t0, l0 = theta.detach().clone(), lam.detach().clone()
    halo_penalty(theta, lam, 1.0, 1.0).backward()
    assert torch.equal(theta.detach(), t0) and torch.equal(lam.detach(), l0)


def test_docstring_example():
    theta, lam = torch.tensor([1.0, -2.0]), torch.tensor([1.0, 2.0])
    assert float(halo_penalty(theta, lam, 3.0, 0.5)) == 6.0
