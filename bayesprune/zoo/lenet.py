"""The two LeNets of the Bayesian-compression literature (Louizos et al. 2017, Molchanov et al. 2017).

Both forwards are plain tensor ops (no Python control flow on values), so
``torch.fx.symbolic_trace`` and torch-pruning's dependency graph can trace them.
Each instance records its constructor arguments in ``self.config`` (JSON-able),
which :func:`bayesprune.zoo.from_config` turns back into a network.

>>> net = LeNet300100(width=0.5)
>>> net(net.example_input(2)).shape, net.fc1.out_features
(torch.Size([2, 10]), 150)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesprune.errors import ConfigError

__all__ = ["LeNet300100", "LeNet5Caffe"]


def _scaled(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


def _check_positive(cls: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{cls}: {name} must be positive, got {value}")


def _sizes(cls: str, name: str, given: Sequence[int] | None, default: list[int]) -> list[int]:
    if given is None:
        return default
    sizes = [int(s) for s in given]
    if len(sizes) != len(default) or any(s < 1 for s in sizes):
        raise ConfigError(
            f"{cls}: {name} must be {len(default)} positive integers, got {list(given)}"
        )
    return sizes


def _example_input(module: nn.Module, shape: tuple[int, ...]) -> Tensor:
    p = next(module.parameters())
    return torch.zeros(shape, dtype=p.dtype, device=p.device)


class LeNet300100(nn.Module):
    """LeNet-300-100: a 784-300-100-10 MLP with ReLUs (266,610 parameters at ``width=1``).

    Accepts ``(N, 1, 28, 28)`` or ``(N, 784)`` inputs (flattened inside ``forward``).

    :param in_features: number of input features (784 for 28x28 images).
    :param n_classes: number of outputs.
    :param width: multiplier for the hidden sizes 300 and 100.
    :param hidden: explicit hidden sizes ``(h1, h2)``, overriding ``width``
        (e.g. to rebuild a pruned network).

    >>> net = LeNet300100()
    >>> sum(p.numel() for p in net.parameters())
    266610
    """

    def __init__(
        self,
        in_features: int = 784,
        n_classes: int = 10,
        width: float = 1.0,
        *,
        hidden: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        _check_positive("LeNet300100", in_features=in_features, n_classes=n_classes, width=width)
        h1, h2 = _sizes("LeNet300100", "hidden", hidden, [_scaled(300, width), _scaled(100, width)])
        self.config: dict[str, Any] = {
            "name": "lenet300",
            "in_features": int(in_features),
            "n_classes": int(n_classes),
            "width": float(width),
        }
        if hidden is not None:
            self.config["hidden"] = [h1, h2]
        self.fc1 = nn.Linear(in_features, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    def example_input(self, batch: int = 1) -> Tensor:
        """A zero input of shape ``(batch, in_features)`` on the parameters' device and dtype."""
        return _example_input(self, (batch, self.fc1.in_features))


class LeNet5Caffe(nn.Module):
    """LeNet-5-Caffe: conv(20, 5x5) - pool - conv(50, 5x5) - pool - fc(500) - fc(n_classes).

    431,080 parameters at ``width=1`` on 28x28 inputs (``fc1`` sees 50*4*4 = 800 features).

    :param in_channels: input channels.
    :param n_classes: number of outputs.
    :param width: multiplier for 20 and 50 filters and 500 hidden units.
    :param input_size: side of the square input image (at least 16).
    :param channels: explicit sizes ``(conv1, conv2, fc1)``, overriding ``width``
        (e.g. to rebuild a pruned network).

    >>> net = LeNet5Caffe()
    >>> net(net.example_input(3)).shape, net.fc1.in_features
    (torch.Size([3, 10]), 800)
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        width: float = 1.0,
        input_size: int = 28,
        *,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        _check_positive("LeNet5Caffe", in_channels=in_channels, n_classes=n_classes, width=width)
        side = ((input_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ConfigError(f"LeNet5Caffe: input_size must be at least 16, got {input_size}")
        c1, c2, f1 = _sizes(
            "LeNet5Caffe",
            "channels",
            channels,
            [_scaled(20, width), _scaled(50, width), _scaled(500, width)],
        )
        self.config: dict[str, Any] = {
            "name": "lenet5",
            "in_channels": int(in_channels),
            "n_classes": int(n_classes),
            "width": float(width),
            "input_size": int(input_size),
        }
        if channels is not None:
            self.config["channels"] = [c1, c2, f1]
        self.input_size = int(input_size)
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * side * side, f1)
        self.fc2 = nn.Linear(f1, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)

    def example_input(self, batch: int = 1) -> Tensor:
        """A zero input of shape ``(batch, in_channels, input_size, input_size)``."""
        s = self.input_size
        return _example_input(self, (batch, self.conv1.in_channels, s, s))
