"""Save and load extracted networks by architecture, not by pickle.

The JSON beside the safetensors file records how to rebuild the network: the
zoo config of the original network, the input shape, the units each
structured layer kept and the residual blocks replaced by their shortcuts
(``"identity"``, from block gates). Loading builds the original architecture,
applies the same surgery (:func:`bayesprune.extract`) and then loads the
weights, so no code is ever unpickled.

Kept units are recorded in the indexing of the network *as built* from its
config. A network that lost units while it trained (``fit(remove_dead=True)``)
is collapsed in the indexing of its current, smaller layers; pass it as
``save_pruned(..., net=net)`` and the keep-sets are translated
(:func:`~bayesprune.pruning.live.to_original`). Whatever the caller passes,
``save_pruned`` rebuilds the recorded architecture before writing and refuses
(``ValueError``, nothing written) when it would not load back into the module
being saved.

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

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bayesprune.errors import CheckpointError, ConfigError, UnsupportedError
from bayesprune.export.safetensors_io import (
    _check_keys,
    _check_tensor,
    _dtype_name,
    load_network,
    save_network,
)
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.extract import extract
from bayesprune.pruning.keepset import KeepSet
from bayesprune.pruning.live import to_original, unit_origin


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
        raise CheckpointError(f"'identity' must be a list of block names, got {identity!r}")
    if units or identity:
        keep = {
            n: KeepSet(units=torch.tensor(u["kept"], dtype=torch.long), n_units=u["n_units"])
            for n, u in units.items()
        }
        for n in identity:
            keep[n] = KeepSet(identity=True, n_units=1)
        example = torch.zeros((1, *arch["input_shape"]))
        try:  # the surgery traces the network on this input: check that it can take it
            with torch.no_grad():
                module.eval()(example)
        except (RuntimeError, IndexError) as e:
            raise CheckpointError(
                f"input_shape {arch['input_shape']} does not fit the network "
                f"{dict(arch['network'])}: {type(e).__name__}: {e}"
            ) from e
        module = extract(module.train(), keep, example_input=example)
    return module


def original_structure(net: BayesianNet, keep: Mapping[str, KeepSet]) -> dict[str, KeepSet]:
    """What ``keep`` removes from ``net``, in the indexing of the network as built.

    ``keep`` is indexed like ``net``'s current layers (as :func:`~bayesprune.collapse`
    returns it). For a net that lost units during ``fit(remove_dead=True)`` the kept
    units are translated to original indices (:func:`~bayesprune.pruning.live.to_original`)
    and every layer that lost units is listed, with or without a structured keep-set.
    Only the structure is returned (``units``, ``n_units``, ``identity``): weight masks
    and values stay with the current shapes.

    :raises ValueError: naming the layer, when a keep-set's ``n_units`` is not the layer's
        current width (keep-sets from another network, or already translated).

    >>> import torch, torch.nn as nn
    >>> from bayesprune import sparsify
    >>> from bayesprune.guides import MAP
    >>> from bayesprune.priors import UnitGates
    >>> from bayesprune.pruning.live import remove_units
    >>> net = sparsify(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), UnitGates(),
    ...                example_input=torch.zeros(1, 4))
    >>> _ = remove_units(net, MAP(net), {"0": [1, 3, 4]})  # the live net: 3 units
    >>> ks = original_structure(net, {"0": KeepSet(units=torch.tensor([0, 2]), n_units=3)})["0"]
    >>> ks.units.tolist(), ks.n_units
    ([1, 4], 6)
    """
    rec = unit_origin(net)
    if rec is None:
        return dict(keep)
    out: dict[str, KeepSet] = {}
    for name, ks in keep.items():
        if ks.units is None or name not in rec.units:
            out[name] = ks
            continue
        now = int(rec.units[name].numel())
        if ks.n_units is not None and ks.n_units != now:
            raise ConfigError(
                f"save_pruned: keep[{name!r}] is for a layer of {ks.n_units} units, but layer "
                f"{name!r} of net has {now} now ({rec.n_units[name]} as built); pass the "
                "keep-sets collapse(net, ...) returned for this net"
            )
        units = to_original(net, {name: ks.units})[name]
        out[name] = KeepSet(units=units, n_units=rec.n_units[name], identity=ks.identity)
    for name, units in rec.units.items():  # layers that lost units, not cut further
        if name not in out or out[name].units is None:
            identity = name in out and out[name].identity
            out[name] = KeepSet(units=units.clone(), n_units=rec.n_units[name], identity=identity)
    return out


def save_pruned(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    keep: Mapping[str, KeepSet],
    input_shape: tuple[int, ...],
    net: BayesianNet | None = None,
    network_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``model.safetensors`` + ``model.json`` for an extracted network.

    :param module: the extracted network.
    :param keep: the keep-sets it was extracted with (units are recorded).
    :param input_shape: shape of one input example (no batch dimension).
    :param net: the fitted :class:`~bayesprune.BayesianNet` it was extracted from: its
        removals during training are composed into the recorded units (see the module
        docstring). Needed whenever ``fit(remove_dead=True)`` removed units.
    :param network_config: the original network's zoo config (default ``net.module.config``).
    :param extra: metrics and provenance to store alongside.
    :returns: the paths ``(weights, json)`` written.
    :raises ValueError: naming the path and the first differing tensor, when the recorded
        architecture would not rebuild ``module`` (nothing is written then), e.g. keep-sets
        of a net shrunk during training passed without ``net=``.
    :raises TypeError: when neither ``net`` nor ``network_config`` is given.
    """
    if network_config is None:
        network_config = getattr(net.module, "config", None) if net is not None else None
        if not isinstance(network_config, Mapping):
            raise UnsupportedError(
                "save_pruned: pass network_config= (the zoo config the network was built "
                "from), or net= a BayesianNet whose module has a .config"
            )
    if net is not None:
        keep = original_structure(net, keep)
    arch = architecture(network_config, keep, input_shape)
    _check_rebuilds(arch, module, path)
    return save_network(module, path, architecture=arch, extra=extra)


def _check_rebuilds(arch: Mapping[str, Any], module: nn.Module, path: Any) -> None:
    """Refuse to write a file :func:`load_pruned` could not load back into ``module``."""
    try:
        built = build_pruned(json.loads(json.dumps(arch)))  # as it will be read back
        want = {k: (list(t.shape), _dtype_name(t.dtype)) for k, t in module.state_dict().items()}
        described = {k: {"shape": s, "dtype": d} for k, (s, d) in want.items()}
        _check_keys(set(described), set(built.state_dict()), "the network", "the rebuilt one")
        for key, t in built.state_dict().items():
            _check_tensor(key, described[key], t, "the rebuilt architecture")
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(
            f"save_pruned: {path}: the architecture to record does not rebuild the network "
            f"being saved ({e}); nothing was written. If units were removed during the fit "
            "(remove_dead), pass net= so the keep-sets are recorded in the original indexing"
        ) from e


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
            raise CheckpointError(
                f"{path}: the architecture in the JSON file (model.json) cannot be rebuilt: {what}"
            ) from e

    module = load_network(path, build, device=device)
    return module.eval()
