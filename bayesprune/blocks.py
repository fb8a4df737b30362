"""Residual blocks: where the residual branch ends, and what a removed block becomes.

A residual block computes ``act(branch(x) + shortcut(x))``. Block gates multiply
``branch(x)`` by a Bernoulli gate (on the output of the branch's last module, its
*branch end*, e.g. ``bn2``); a gate at 0 leaves ``act(shortcut(x))``, which
:func:`to_shortcut` builds as a small plain module (:class:`Shortcut`) so that
:func:`bayesprune.extract` can put it in place of the block.

A module is a residual block if

- its class has a ``branch_end`` attribute naming that submodule (optionally a
  ``shortcut`` attribute naming the shortcut submodule, default ``"downsample"``,
  and an ``as_shortcut()`` method building its replacement), or
- its type was registered with :func:`register_block` (the zoo's
  :class:`~bayesprune.zoo.resnet_cifar.BasicBlock` registers itself when it is
  defined; torchvision's ``BasicBlock`` and ``Bottleneck`` are registered as soon
  as torchvision's ResNets are imported).

This module sits below the zoo: the zoo imports it and registers its blocks, never
the other way round.

The shortcut submodule may be ``None`` (identity) or any module (e.g. a 1×1
conv + BatchNorm when the block changes shape); the activation after the
addition is ReLU unless the block's ``as_shortcut()`` says otherwise.

>>> import torch, torch.nn as nn
>>> from bayesprune.zoo import build
>>> block = build("resnet20", width=0.25).layer2[0]
>>> block_spec(block)
BlockSpec(branch_end='bn2', shortcut='downsample')
>>> x = torch.randn(2, 4, 8, 8)
>>> short = to_shortcut(block)
>>> torch.equal(short(x), torch.relu(block.downsample(x)))
True
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bayesprune.errors import UnsupportedError

__all__ = ["BlockSpec", "Shortcut", "block_spec", "block_types", "register_block", "to_shortcut"]


@dataclass(frozen=True)
class BlockSpec:
    """Names, inside one residual block, of its branch's last module and of its shortcut."""

    branch_end: str
    shortcut: str = "downsample"


_REGISTERED: dict[type, BlockSpec] = {}


def register_block(cls: type, *, branch_end: str, shortcut: str = "downsample") -> None:
    """Declare ``cls`` a residual block computing ``relu(branch(x) + shortcut(x))``.

    :param branch_end: attribute name of the branch's last module (its output is gated).
    :param shortcut: attribute name of the shortcut module (``None``-valued = identity).
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UnsupportedError(f"register_block: expected an nn.Module subclass, got {cls!r}")
    _REGISTERED[cls] = BlockSpec(branch_end, shortcut)


def _register_torchvision() -> None:
    # torchvision is only imported by the user: its blocks can only exist once it is
    tv = sys.modules.get("torchvision.models.resnet")
    if tv is not None and tv.BasicBlock not in _REGISTERED:
        register_block(tv.BasicBlock, branch_end="bn2")
        register_block(tv.Bottleneck, branch_end="bn3")


def block_types() -> tuple[type, ...]:
    """The registered residual block types, in the order they were registered.

    >>> from bayesprune.zoo.resnet_cifar import BasicBlock
    >>> BasicBlock in block_types()
    True
    """
    _register_torchvision()
    return tuple(_REGISTERED)


def block_spec(module: nn.Module) -> BlockSpec | None:
    """How ``module`` is a residual block, or ``None`` if it is not one."""
    end = getattr(type(module), "branch_end", None)
    if isinstance(end, str):
        return BlockSpec(end, getattr(type(module), "shortcut", "downsample"))
    _register_torchvision()
    for cls in type(module).__mro__:
        if cls in _REGISTERED:
            return _REGISTERED[cls]
    return None


class Shortcut(nn.Module):
    """What a removed residual block becomes: ``relu(downsample(x))``.

    ``downsample`` is the block's own shortcut module (same name, so its parameters keep
    their names in the extracted network), or ``nn.Identity()``.
    """

    def __init__(self, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.downsample(x))


def to_shortcut(block: nn.Module) -> nn.Module:
    """A plain module computing ``block``'s output with the residual branch at 0
    (the block's ``as_shortcut()`` if it has one). Shares the shortcut's parameters.

    :raises TypeError: if ``block`` is not a residual block.
    """
    if callable(getattr(block, "as_shortcut", None)):
        return block.as_shortcut()
    spec = block_spec(block)
    if spec is None:
        raise UnsupportedError(f"{type(block).__name__} is not a residual block")
    return Shortcut(getattr(block, spec.shortcut, None))
