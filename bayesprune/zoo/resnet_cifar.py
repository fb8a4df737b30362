"""CIFAR-style ResNets (He et al. 2016, section 4.2): ResNet-20/32/44/56.

A 3×3 stem conv, three stages of ``n`` :class:`BasicBlock`\\ s with 16, 32, 64
channels (× ``width``; stages 2 and 3 start with stride 2), global average
pooling and a linear classifier: ``depth = 6n + 2``. Where a block changes
shape its shortcut is a 1×1 conv + BatchNorm (option B), so every residual
addition is between module outputs that torch-pruning can trace and slice.

Module names follow torchvision: ``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0``, ``fc``. Every block says where its residual branch
ends (``BasicBlock.branch_end = "bn2"``) and how to become its shortcut
(:meth:`BasicBlock.as_shortcut`), which is what block gates
(:class:`~bayesprune.priors.BlockGates`) and :func:`bayesprune.extract` use.

>>> net = ResNetCIFAR(depth=20, in_channels=1, width=0.25, input_size=28)
>>> net(net.example_input(2)).shape, net.layer3[0].conv1.out_channels
(torch.Size([2, 10]), 16)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bayesprune.blocks import Shortcut, register_block
from bayesprune.errors import ConfigError

__all__ = ["BasicBlock", "ResNetCIFAR", "resnet20", "resnet32", "resnet44", "resnet56"]

STAGE_CHANNELS = (16, 32, 64)


def _scaled(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


def _positive_int(cls: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{cls}: {name} must be a positive integer, got {value!r}")
    return value


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3×3 convs.

    :param in_planes: input channels.
    :param planes: output channels.
    :param stride: stride of ``conv1`` (and of the 1×1 shortcut conv).
    """

    #: the module whose output ends the residual branch (what a block gate multiplies)
    branch_end = "bn2"
    #: the attribute holding the shortcut (``None`` = identity)
    shortcut = "downsample"

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)

    def as_shortcut(self) -> Shortcut:
        """The block with its residual branch at 0: ``relu(shortcut(x))`` (shares the
        shortcut's parameters, under the same names)."""
        return Shortcut(self.downsample)


# blocks.py lies below the zoo and never imports it: the zoo's block announces itself
register_block(BasicBlock, branch_end=BasicBlock.branch_end, shortcut=BasicBlock.shortcut)


class ResNetCIFAR(nn.Module):
    """ResNet for 32×32 (or 28×28) images: ``depth = 6n + 2`` layers, ``n`` blocks per stage.

    0.27M parameters for ResNet-20 at ``width=1`` (272,474 with 3 input channels).

    :param depth: 20, 32, 44, 56, ... (``6n + 2``, ``n ≥ 1``).
    :param in_channels: input channels (3 for CIFAR, 1 for Fashion-MNIST).
    :param n_classes: number of outputs.
    :param width: multiplier for the 16/32/64 stage channels.
    :param input_size: side of the square input image (only for :meth:`example_input`;
        the network pools globally and accepts any size).

    >>> sum(p.numel() for p in ResNetCIFAR(depth=20).parameters())
    272474
    """

    def __init__(
        self,
        depth: int = 20,
        in_channels: int = 3,
        n_classes: int = 10,
        width: float = 1.0,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        depth = _positive_int("ResNetCIFAR", "depth", depth)
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(
                f"ResNetCIFAR: depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}"
            )
        in_channels = _positive_int("ResNetCIFAR", "in_channels", in_channels)
        n_classes = _positive_int("ResNetCIFAR", "n_classes", n_classes)
        input_size = _positive_int("ResNetCIFAR", "input_size", input_size)
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
            raise ConfigError(f"ResNetCIFAR: width must be a number > 0, got {width!r}")
        n = (depth - 2) // 6
        self.config: dict[str, Any] = {
            "name": "resnet-cifar",
            "depth": depth,
            "in_channels": in_channels,
            "n_classes": n_classes,
            "width": float(width),
            "input_size": input_size,
        }
        self.input_size = input_size
        c1, c2, c3 = (_scaled(c, width) for c in STAGE_CHANNELS)
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.layer1 = self._stage(c1, c1, n, stride=1)
        self.layer2 = self._stage(c1, c2, n, stride=2)
        self.layer3 = self._stage(c2, c3, n, stride=2)
        self.fc = nn.Linear(c3, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)

    def example_input(self, batch: int = 1) -> Tensor:
        """A zero input of shape ``(batch, in_channels, input_size, input_size)``."""
        p = self.conv1.weight
        s = self.input_size
        return torch.zeros((batch, self.conv1.in_channels, s, s), dtype=p.dtype, device=p.device)


def _at_depth(depth: int, kwargs: dict[str, Any]) -> ResNetCIFAR:
    if kwargs.setdefault("depth", depth) != depth:
        raise ConfigError(f"resnet{depth}: depth is {depth}, got depth={kwargs['depth']!r}")
    return ResNetCIFAR(**kwargs)


def resnet20(**kwargs: Any) -> ResNetCIFAR:
    """ResNet-20 (3 blocks per stage); keyword arguments as :class:`ResNetCIFAR`."""
    return _at_depth(20, kwargs)


def resnet32(**kwargs: Any) -> ResNetCIFAR:
    """ResNet-32 (5 blocks per stage)."""
    return _at_depth(32, kwargs)


def resnet44(**kwargs: Any) -> ResNetCIFAR:
    """ResNet-44 (7 blocks per stage)."""
    return _at_depth(44, kwargs)


def resnet56(**kwargs: Any) -> ResNetCIFAR:
    """ResNet-56 (9 blocks per stage)."""
    return _at_depth(56, kwargs)
