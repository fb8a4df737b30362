"""``load``: one entry point for the networks bayesprune saves, no builder needed.

``bayesprune extract`` (and :func:`~bayesprune.export.pruned_network.save_pruned`)
write ``model.safetensors`` + ``model.json``; the JSON names the zoo network and
the units kept, so :func:`load` rebuilds the pruned architecture and fills in
the weights without unpickling anything. Networks saved with
:func:`~bayesprune.export.save_network` and an architecture of the caller's own
load with :func:`~bayesprune.export.load_network`, given the caller's ``build``
function or a fresh dense instance of the architecture (``like=``).

>>> import tempfile, torch
>>> from bayesprune.export.pruned_network import save_pruned
>>> from bayesprune.pruning import KeepSet, extract
>>> from bayesprune.zoo import build
>>> net = build("lenet300", width=0.1)
>>> keep = {"fc1": KeepSet(units=torch.tensor([0, 5, 7]), n_units=30)}
>>> small = extract(net, keep, example_input=torch.zeros(1, 784))
>>> d = tempfile.mkdtemp()
>>> _ = save_pruned(small, d, network_config=net.config, keep=keep, input_shape=(784,))
>>> back = load(d)
>>> back.fc1.out_features, back.training
(3, False)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from bayesprune.errors import CheckpointError
from bayesprune.export.pruned_network import load_pruned
from bayesprune.export.safetensors_io import META_NAME, WEIGHTS_NAME, _read_meta

__all__ = ["load"]


def load(path: str | os.PathLike[str], *, device: str | torch.device | None = None) -> nn.Module:
    """Load a network bayesprune saved, as a plain ``nn.Module`` in eval mode.

    :param path: the folder holding ``model.safetensors`` and ``model.json`` (e.g.
        ``runs/gates-lenet5/extracted``), or the path of either file (``out/lenet.json``
        names ``out/lenet.safetensors`` too).
    :param device: where to put the network (default: CPU).
    :returns: the network, in eval mode, its weights checked against the recorded
        shapes, dtypes, size and SHA-256.
    :raises FileNotFoundError: naming the missing folder or file.
    :raises CheckpointError: (a ``ValueError``) naming the file, when a file is corrupt or
        truncated, the two files do not belong together, or the architecture cannot be
        rebuilt (an unknown network, or one saved with an architecture of the caller's own:
        use :func:`~bayesprune.export.load_network` with ``build`` or ``like``).

    >>> import tempfile
    >>> load(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: ...model.json: no such file; expected model.safetensors and model.json ...
    """
    weights, meta = _files(Path(path))
    for f in (meta, weights):
        if not f.is_file():
            raise FileNotFoundError(
                f"{f}: no such file; expected {weights.name} and {meta.name} side by side "
                "(written by bayesprune extract or save_pruned)"
            )
    arch = _read_meta(meta)["architecture"]
    if "network" not in arch:
        raise CheckpointError(
            f"{meta}: the architecture names no zoo network ('network' is missing), so it "
            "cannot be rebuilt without code: it was saved by save_network with an "
            "architecture of its own; load it with bayesprune.export.load_network(path, build) "
            "or load_network(path, like=<a fresh instance of that architecture>)"
        )
    return load_pruned(path, device=device)


def _files(p: Path) -> tuple[Path, Path]:
    if p.suffix in (".safetensors", ".json"):
        return p.with_suffix(".safetensors"), p.with_suffix(".json")
    if not p.is_dir():
        raise FileNotFoundError(
            f"{p}: no such folder (expected one holding {WEIGHTS_NAME} and {META_NAME})"
        )
    return p / WEIGHTS_NAME, p / META_NAME
