"""A small Vision Transformer for 28x28 images (Fashion-MNIST): torchvision's own
``VisionTransformer`` with a one-channel patch embedding.

Module names are torchvision's: ``conv_proj`` (the patch embedding), then per block
``encoder.layers.encoder_layer_<i>.self_attention`` (an ``nn.MultiheadAttention``: gate
priors put one gate per head on it) and ``...mlp.0`` / ``...mlp.3`` (the MLP's two
Linear layers, GELU between them: ``mlp.0``'s hidden units can be removed exactly, since
GELU(0) = 0), and ``heads.head`` (the classifier).

>>> net = ViTTiny()
>>> net(net.example_input(2)).shape, net.encoder.layers[0].self_attention.num_heads
(torch.Size([2, 10]), 4)
>>> sum(p.numel() for p in net.parameters())
139018
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer

from bayesprune.errors import ConfigError

__all__ = ["ViTTiny"]


class ViTTiny(VisionTransformer):
    """ViT-tiny: 4x4 patches of 7x7 pixels, a class token, ``num_layers`` pre-norm blocks of
    ``num_heads``-head self-attention and a GELU MLP (torchvision's ``VisionTransformer``).

    :param in_channels: input channels (the patch embedding is a ``patch_size`` conv).
    :param n_classes: number of outputs.
    :param width: multiplier of the hidden size 64 (rounded to a multiple of ``num_heads``)
        and of the MLP size 128.
    :param image_size: side of the square input image (a multiple of ``patch_size``).
    :param patch_size: side of a patch.
    :param num_layers: encoder blocks.
    :param num_heads: attention heads per block.
    :param hidden_dim: the model dimension, overriding ``width`` (a multiple of
        ``num_heads``).
    :param mlp_dim: the MLP's hidden size, overriding ``width``.
    :param dropout: dropout after attention and in the MLP.
    :param attention_dropout: dropout on the attention weights.

    >>> ViTTiny(width=0.5, num_layers=2).config["width"], ViTTiny(hidden_dim=32).hidden_dim
    (0.5, 32)
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        width: float = 1.0,
        image_size: int = 28,
        patch_size: int = 7,
        num_layers: int = 4,
        num_heads: int = 4,
        *,
        hidden_dim: int | None = None,
        mlp_dim: int | None = None,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ) -> None:
        for key, v in (
            ("in_channels", in_channels),
            ("n_classes", n_classes),
            ("width", width),
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"ViTTiny: {key} must be positive, got {v!r}")
        if image_size % patch_size:
            raise ConfigError(
                f"ViTTiny: image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        hidden = hidden_dim or num_heads * max(1, round(64 * width / num_heads))
        mlp = mlp_dim or max(1, round(128 * width))
        if hidden % num_heads:
            raise ConfigError(
                f"ViTTiny: hidden_dim {hidden} is not a multiple of num_heads {num_heads}"
            )
        super().__init__(
            image_size=image_size,
            patch_size=patch_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden,
            mlp_dim=mlp,
            dropout=dropout,
            attention_dropout=attention_dropout,
            num_classes=n_classes,
        )
        self.conv_proj = nn.Conv2d(in_channels, hidden, kernel_size=patch_size, stride=patch_size)
        fan_in = in_channels * patch_size * patch_size  # as torchvision initialises its stem
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        self.in_channels = int(in_channels)
        self.config: dict[str, Any] = {
            "name": "vit-tiny",
            "in_channels": int(in_channels),
            "n_classes": int(n_classes),
            "width": float(width),
            "image_size": int(image_size),
            "patch_size": int(patch_size),
            "num_layers": int(num_layers),
            "num_heads": int(num_heads),
        }
        if hidden_dim is not None:
            self.config["hidden_dim"] = int(hidden_dim)
        if mlp_dim is not None:
            self.config["mlp_dim"] = int(mlp_dim)
        if dropout:
            self.config["dropout"] = float(dropout)
        if attention_dropout:
            self.config["attention_dropout"] = float(attention_dropout)

    def example_input(self, batch: int = 1) -> Tensor:
        """A zero input of shape ``(batch, in_channels, image_size, image_size)``."""
        p = self.conv_proj.weight
        s = self.image_size
        return torch.zeros((batch, self.in_channels, s, s), dtype=p.dtype, device=p.device)
