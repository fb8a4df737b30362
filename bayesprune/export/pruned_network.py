"""Save and load extracted networks by architecture, not by pickle.

The JSON beside the safetensors file records how to rebuild the network: the
zoo config of the original network, the input shape, the units each
structured layer kept and the residual blocks replaced by their shortcuts
(``"identity"``, from block gates). Loading builds the original architecture,
applies the same surgery (:func:`bayesprune.extract`) and then loads the
weights, so no code is ever unpickled.

>>> import tempfile, torch
>>> from bayesprune.zoo import build
>>> from bayesprune.pruning import KeepSet, extract
>>> net = build("lenet300")
>>> keep = {"fc1": KeepSet(units=torch.arange(10), n_units=300)}
>>> small = extract(net, keep, example_input=net.example_input())
>>> d = tempfile.mkdtemp()
>>> _ = save_pruned(small, d, network_config=net.config, keep=keep, input_shape=(784,))
>>> load_pruned(d).fc1.out_features
10
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bayesprune.export.safetensors_io import load_network, save_network
from bayesprune.pruning.extract import extract
from bayesprune.pruning.keepset import KeepSet


def architecture(
    network_config: Mapping[str, Any], keep: Mapping[str, KeepSet], input_shape: tuple[int, ...]
) -> dict[str, Any]:
    """The JSON description of a pruned network."""
    units = {
        name: {"kept": ks.units.tolist(), "n_units": ks.n_units}
        for name, ks in keep.items()
        if ks.units is not None
    }
    arch = {"network": dict(network_config), "input_shape": list(input_shape), "units": units}
    identity = [name for name, ks in keep.items() if ks.identity]
    if identity:
        arch["identity"] = identity
    return arch


def build_pruned(arch: Mapping[str, Any]) -> nn.Module:
    """An untrained network of the saved pruned shapes (original zoo net + the same surgery)."""
    from bayesprune.zoo import from_config

    module = from_config(dict(arch["network"]))
    units = arch.get("units") or {}
    identity = arch.get("identity") or []
    if not isinstance(identity, list) or not all(isinstance(n, str) for n in identity):
        raise ValueError(f"'identity' must be a list of block names, got {identity!r}")
    if units or identity:
        keep = {
            n: KeepSet(units=torch.tensor(u["kept"], dtype=torch.long), n_units=u["n_units"])
            for n, u in units.items()
        }
        for n in identity:
            keep[n] = KeepSet(identity=True, n_units=1)
        example = torch.zeros((1, *arch["input_shape"]))
        module = extract(module, keep, example_input=example)
    return module


def save_pruned(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    network_config: Mapping[str, Any],
    keep: Mapping[str, KeepSet],
    input_shape: tuple[int, ...],
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``model.safetensors`` + ``model.json`` for an extracted network.

    :param module: the extracted network.
    :param network_config: the original network's zoo config (``net.config``).
    :param keep: the keep-sets it was extracted with (units are recorded).
    :param input_shape: shape of one input example (no batch dimension).
    :param extra: metrics and provenance to store alongside.
    """
    return save_network(
        module, path, architecture=architecture(network_config, keep, input_shape), extra=extra
    )


def load_pruned(path: str | os.PathLike, *, device: str | torch.device | None = None) -> nn.Module:
    """Load a network written by :func:`save_pruned` (no pickle); returns it in eval mode.

    :raises FileNotFoundError: if a file is missing.
    :raises ValueError: naming the file, if a file is corrupt or its architecture cannot
        be rebuilt (unknown network, keep-sets that do not fit it, ...).
    """

    def build(arch: dict[str, Any]) -> nn.Module:
        try:
            return build_pruned(arch)
        except (KeyError, TypeError, ValueError) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else str(e)
            raise ValueError(
                f"{path}: the architecture in the JSON file (model.json) cannot be rebuilt: {what}"
            ) from e

    module = load_network(path, build, device=device)
    return module.eval()
