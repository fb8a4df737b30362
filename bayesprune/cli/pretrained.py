"""Pre-trained weights for a spec's network: ``[network] pretrained`` and ``[pretrain]``.

A spec can start its network from trained weights in two ways (a lottery-jackpot spec must
use one of them: its search runs over frozen pre-trained weights):

- ``[network] pretrained = "path"`` loads saved weights into the network as built: a folder
  (or its ``.json`` / ``.safetensors`` file) written by
  :func:`bayesprune.export.save_network` -- e.g. ``RUN/pretrained`` or ``RUN/dense`` of an
  earlier run --, or a ``torch.save``\\ d state dict (read with ``weights_only=True``);
- ``[pretrain]`` trains the dense network first with :func:`bayesprune.methods.train` (the
  one fit loop): ``epochs`` (required), ``lr`` and ``batch_size`` (default: ``[fit]``'s);
  optimizer, weight decay, seed, device and loss are ``[fit]``'s.

Either way ``bayesprune fit`` saves the starting weights in ``RUN/pretrained`` (safetensors)
and ``bayesprune extract`` rebuilds the network from there, so a run folder does not depend
on the file it started from.

>>> import tempfile, torch.nn as nn
>>> d = tempfile.mkdtemp()
>>> _ = save_weights(nn.Linear(3, 2), d, {"name": "linear"})
>>> fresh = nn.Linear(3, 2)
>>> load_weights(fresh, d, "[network] pretrained")
>>> check_pretrain({"epochs": 0}, "spec.toml")
Traceback (most recent call last):
...
bayesprune.errors.SpecError: spec.toml: [pretrain] epochs must be an integer >= 1, got 0
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bayesprune.errors import CheckpointError, SpecError
from bayesprune.export.safetensors_io import load_network, save_network

#: ``[pretrain]`` keys; ``None``: the ``[fit]`` value
PRETRAIN_DEFAULTS: dict[str, Any] = {"epochs": None, "lr": None, "batch_size": None}


def check_pretrain(section: Mapping[str, Any], source: str) -> None:
    """Validate a ``[pretrain]`` table.

    :raises SpecError: naming the file and key, for an unknown key or a bad value.
    """
    where = f"{source}: [pretrain]"
    bad = sorted(set(section) - set(PRETRAIN_DEFAULTS))
    if bad:
        raise SpecError(f"{where}: unknown key(s) {bad}; known: {sorted(PRETRAIN_DEFAULTS)}")
    epochs = section.get("epochs")
    if "epochs" not in section:
        raise SpecError(f"{where} needs epochs (dense epochs before the fit, e.g. epochs = 5)")
    if not _is_int(epochs) or epochs < 1:
        raise SpecError(f"{where} epochs must be an integer >= 1, got {epochs!r}")
    size = section.get("batch_size")
    if size is not None and not (_is_int(size) and size >= 1):
        raise SpecError(f"{where} batch_size must be an integer >= 1, got {size!r}")
    lr = section.get("lr")
    if lr is not None and not (_is_number(lr) and 0 < lr < float("inf")):
        raise SpecError(f"{where} lr must be a number > 0, got {lr!r}")


def check_pretrained_path(value: Any, source: str) -> None:
    """``[network] pretrained`` must be a non-empty path string (the file is read later)."""
    if not isinstance(value, str) or not value.strip():
        raise SpecError(
            f"{source}: [network] pretrained must be the path of saved weights, got {value!r}"
        )


def load_weights(network: nn.Module, path: str | os.PathLike, where: str) -> None:
    """Load the weights saved at ``path`` into ``network`` in place (strictly: the same keys
    and shapes).

    :param where: what to name in errors (e.g. ``"spec.toml: [network] pretrained"``).
    :raises CheckpointError: naming ``where`` and the path, for a missing, unreadable or
        mismatched file.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{where}: {str(p)!r} does not exist")
    try:
        if p.is_dir() or p.suffix == ".json" or p.with_suffix(".json").is_file():
            state = load_network(p, like=network).state_dict()
        elif p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except FileNotFoundError as e:
        raise CheckpointError(f"{where}: {e}") from None
    except Exception as e:  # torch.load / safetensors on a file that is neither
        raise CheckpointError(f"{where}: {str(p)!r} is not a readable state dict ({e})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: {str(p)!r} does not hold a state dict")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        message = " ".join(str(e).split())
        raise CheckpointError(f"{where}: {str(p)!r} does not fit the network: {message}") from None


def save_weights(
    network: nn.Module, path: str | os.PathLike, architecture: Mapping[str, Any]
) -> Path:
    """Save ``network``'s weights (safetensors + JSON, no pickle) where :func:`load_weights`
    reads them back; returns the weights file."""
    return save_network(network, path, architecture=dict(architecture))[0]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
