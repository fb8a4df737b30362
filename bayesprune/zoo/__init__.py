"""Networks by name: the LeNets, the CIFAR ResNets, anything registered, and torchvision models as ``"tv:<name>"``.

Every network built here carries a JSON-able ``config`` dict with a ``"name"``
key; :func:`from_config` rebuilds an untrained copy from it.

>>> net = build("lenet5", width=0.5)
>>> type(from_config(net.config)).__name__, net.config["width"]
('LeNet5Caffe', 0.5)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.zoo.lenet import LeNet5Caffe, LeNet300100
from bayesprune.zoo.resnet_cifar import ResNetCIFAR, resnet20, resnet32, resnet44, resnet56

__all__ = [
    "LeNet300100",
    "LeNet5Caffe",
    "REGISTRY",
    "ResNetCIFAR",
    "ViTTiny",
    "build",
    "from_config",
    "register",
]

logger = logging.getLogger(__name__)

TORCHVISION_PREFIX = "tv:"


def _vit_tiny(**kwargs: Any) -> nn.Module:
    """:class:`~bayesprune.zoo.vit.ViTTiny` (torchvision is imported when one is built)."""
    from bayesprune.zoo.vit import ViTTiny

    return ViTTiny(**kwargs)


def __getattr__(name: str) -> Any:
    if name == "ViTTiny":  # imported on first use: it needs torchvision
        from bayesprune.zoo.vit import ViTTiny

        return ViTTiny
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300100,
    "lenet300-100": LeNet300100,
    "lenet5": LeNet5Caffe,
    "lenet5-caffe": LeNet5Caffe,
    "resnet-cifar": ResNetCIFAR,  # depth=20, 32, 44, 56, ...
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet44": resnet44,
    "resnet56": resnet56,
    "vit-tiny": _vit_tiny,  # torchvision's VisionTransformer for 28x28, 1 channel
}


def register(name: str, builder: Callable[..., nn.Module], *, overwrite: bool = False) -> None:
    """Make ``build(name, **kwargs)`` call ``builder(**kwargs)``.

    :param name: the new name (not starting with ``"tv:"``).
    :param builder: an ``nn.Module`` subclass or a function returning one.
    :param overwrite: replace an existing entry instead of raising.
    :raises ValueError: if ``name`` is taken (and not ``overwrite``) or reserved.

    >>> register("tiny-mlp", lambda n_classes=2: nn.Linear(4, n_classes), overwrite=True)
    >>> build("tiny-mlp").config
    {'name': 'tiny-mlp'}
    >>> del REGISTRY["tiny-mlp"]
    """
    if name.startswith(TORCHVISION_PREFIX):
        raise ConfigError(f"register: names starting with {TORCHVISION_PREFIX!r} are reserved")
    if not callable(builder):
        raise UnsupportedError(f"register({name!r}): builder must be callable, got {builder!r}")
    if name in REGISTRY and not overwrite:
        raise ConfigError(f"register: {name!r} is already registered; pass overwrite=True")
    REGISTRY[name] = builder


def _known() -> str:
    return f"{', '.join(sorted(REGISTRY))}, or '{TORCHVISION_PREFIX}<name>' for any torchvision model (e.g. 'tv:resnet18')"


def _build_torchvision(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    tv_name = name[len(TORCHVISION_PREFIX) :]
    if kwargs.get("weights") is not None:
        raise ConfigError(
            f"build({name!r}): pretrained weights are never downloaded here; "
            "build with weights=None and load a state dict yourself"
        )
    kwargs = {k: v for k, v in kwargs.items() if k != "weights"}
    known = torchvision.models.list_models()
    if tv_name not in known:
        raise ConfigError(
            f"unknown torchvision model {tv_name!r}; torchvision has: {', '.join(sorted(known))}"
        )
    return torchvision.models.get_model(tv_name, weights=None, **kwargs)


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build an untrained network by name.

    :param name: a key of :data:`REGISTRY` (``"lenet300"``, ``"lenet300-100"``,
        ``"lenet5"``, ``"lenet5-caffe"``, ``"resnet20"`` (32, 44, 56), ``"resnet-cifar"``
        (with ``depth=``), ``"vit-tiny"``, or a registered name), or ``"tv:<name>"``
        for a torchvision model (built with ``weights=None``; nothing is downloaded).
    :param kwargs: constructor arguments (e.g. ``width=0.5``, or ``num_classes=10`` for torchvision).
    :returns: the network, with ``.config`` set so that ``from_config(net.config)`` rebuilds it.
    :raises ValueError: for an unknown name, listing the known ones.

    >>> build("lenet300", width=0.5).fc2.out_features
    50
    """
    if name.startswith(TORCHVISION_PREFIX):
        model = _build_torchvision(name, kwargs)
    elif name in REGISTRY:
        model = REGISTRY[name](**kwargs)
    else:
        raise ConfigError(f"unknown network {name!r}; known: {_known()}")
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        config["name"] = name
    else:
        config = {"name": name, **kwargs}
        model.config = config
    try:
        json.dumps(config)
    except TypeError:
        logger.warning("config of %r is not JSON-serialisable: %r", name, config)
    return model


def from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from its ``config`` (the inverse of ``net.config``).

    :param config: a mapping with a ``"name"`` key; the other keys are passed to :func:`build`.
    :raises ValueError: if ``"name"`` is missing or unknown.

    >>> from_config({"name": "lenet300", "width": 0.25}).fc1.out_features
    75
    """
    if "name" not in config:
        raise ConfigError(f"from_config: config has no 'name' key: {dict(config)!r}")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    return build(str(config["name"]), **kwargs)
