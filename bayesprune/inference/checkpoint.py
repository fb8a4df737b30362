"""Atomic, pickle-free checkpoints of a fit.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings
and containers of them; it is loaded with ``weights_only=True`` so loading never
runs code from the file. It is written atomically (:func:`bayesprune.atomic.atomic_write`:
a temporary file in the same folder, fsynced, moved into place with ``os.replace``, the
folder fsynced), so a fit killed while saving leaves the previous checkpoint whole.

>>> import tempfile, torch
>>> d = tempfile.mkdtemp()
>>> path = save_checkpoint({"format": "demo", "epoch": 3, "w": torch.ones(2)}, d)
>>> load_checkpoint(path)["epoch"]
3
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bayesprune.atomic import atomic_write
from bayesprune.errors import CheckpointError

CHECKPOINT_NAME = "last.pt"


def save_checkpoint(
    state: dict[str, Any], directory: str | os.PathLike, name: str = CHECKPOINT_NAME
) -> Path:
    """Write ``state`` atomically to ``directory/name`` and return the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return atomic_write(directory / name, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling code.

    :raises CheckpointError: naming the file when it is missing, truncated or not a checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, disallowed global, ...
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a bayesprune checkpoint: {e}"
        ) from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"checkpoint {path} is not a bayesprune checkpoint (no 'format' key)")
    return state
