"""Small synthetic data sets for tests and examples.

:func:`synthetic_classification` draws one Gaussian prototype per class and
adds isotropic noise: linearly separable with high probability, so a tiny net
learns it in a few steps. :func:`synthetic_regression` is a linear model with
Gaussian noise and known (optionally sparse) weights, for checking inference
against the closed-form Bayesian linear-regression posterior.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from bayesprune.data.dataset import Dataset, Split
from bayesprune.errors import ConfigError

__all__ = ["synthetic_classification", "synthetic_regression"]


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        if value < 0:
            raise ConfigError(f"{name} must be non-negative, got {value}")


def synthetic_classification(
    n_train: int = 512,
    n_val: int = 128,
    n_test: int = 128,
    *,
    input_shape: Sequence[int] = (1, 8, 8),
    n_classes: int = 4,
    seed: int = 0,
    noise: float = 1.0,
    device: torch.device | str = "cpu",
) -> Dataset:
    """Class prototypes plus Gaussian noise: ``x = prototype[y] + noise * eps``.

    Prototypes are standard normal of shape ``input_shape``; labels are balanced
    (``arange(n) % n_classes``, shuffled). Every split is drawn from the same
    prototypes; the result depends only on the arguments.

    :param n_train: number of training examples (at least 1).
    :param n_val: number of validation examples (``0``: no val split).
    :param n_test: number of test examples (``0``: no test split).
    :param input_shape: shape of one example, e.g. ``(1, 8, 8)`` or ``(16,)``.
    :param n_classes: number of classes (at least 2).
    :param seed: seed for prototypes, labels and noise.
    :param noise: standard deviation of the noise; larger is harder.
    :param device: where the tensors live.
    :returns: a :class:`Dataset` named ``"synthetic"`` with float32 inputs and int64 labels.

    >>> ds = synthetic_classification(64, 16, 16, input_shape=(10,), n_classes=3)
    >>> ds.input_shape, ds.n_classes, len(ds.val)
    ((10,), 3, 16)
    """
    _check_sizes(n_train=n_train, n_val=n_val, n_test=n_test)
    if n_train < 1:
        raise ConfigError(f"n_train must be at least 1, got {n_train}")
    if n_classes < 2:
        raise ConfigError(f"n_classes must be at least 2, got {n_classes}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"input_shape must be non-empty with positive sizes, got {input_shape}")
    if noise < 0:
        raise ConfigError(f"noise must be non-negative, got {noise}")

    g = _generator(seed)
    prototypes = torch.randn((n_classes, *shape), generator=g)

    def draw(n: int) -> Split | None:
        if n == 0:
            return None
        y = (torch.arange(n) % n_classes)[torch.randperm(n, generator=g)]
        x = prototypes[y] + noise * torch.randn((n, *shape), generator=g)
        return Split(x.to(device), y.to(device))

    train = draw(n_train)
    assert train is not None
    return Dataset(
        train=train, val=draw(n_val), test=draw(n_test), n_classes=n_classes, name="synthetic"
    )


def synthetic_regression(
    n: int = 256,
    n_features: int = 8,
    *,
    n_val: int = 0,
    n_test: int = 0,
    n_informative: int | None = None,
    seed: int = 0,
    noise_scale: float = 0.1,
    device: torch.device | str = "cpu",
) -> tuple[Dataset, Tensor]:
    """Linear regression data ``y = x @ w + noise_scale * eps`` with ``x, eps ~ N(0, 1)``.

    With ``n_informative=k`` only the first ``k`` weights are non-zero (the rest
    are exactly zero), a ground truth for sparsity priors.

    :param n: number of training examples (at least 1).
    :param n_features: number of input features (at least 1).
    :param n_val: number of validation examples (``0``: no val split).
    :param n_test: number of test examples (``0``: no test split).
    :param n_informative: number of non-zero weights; ``None`` means all.
    :param seed: seed for weights, inputs and noise.
    :param noise_scale: standard deviation of the observation noise.
    :param device: where the tensors live.
    :returns: ``(dataset, true_weights)``; targets are float32 of shape ``(N,)``,
        weights float32 of shape ``(n_features,)``, and ``dataset.n_classes`` is ``None``.

    >>> ds, w = synthetic_regression(100, 5, n_informative=2, noise_scale=0.0)
    >>> torch.allclose(ds.train.x @ w, ds.train.y), int((w != 0).sum())
    (True, 2)
    """
    _check_sizes(n_val=n_val, n_test=n_test)
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if n_features < 1:
        raise ConfigError(f"n_features must be at least 1, got {n_features}")
    k = n_features if n_informative is None else n_informative
    if not 0 <= k <= n_features:
        raise ConfigError(f"n_informative must be in [0, {n_features}], got {n_informative}")
    if noise_scale < 0:
        raise ConfigError(f"noise_scale must be non-negative, got {noise_scale}")

    g = _generator(seed)
    w = torch.randn(n_features, generator=g)
    w[k:] = 0.0

    def draw(m: int) -> Split | None:
        if m == 0:
            return None
        x = torch.randn((m, n_features), generator=g)
        y = x @ w + noise_scale * torch.randn(m, generator=g)
        return Split(x.to(device), y.to(device))

    train = draw(n)
    assert train is not None
    ds = Dataset(
        train=train, val=draw(n_val), test=draw(n_test), n_classes=None, name="synthetic-regression"
    )
    return ds, w.to(device)
