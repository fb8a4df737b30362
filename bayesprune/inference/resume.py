"""What a fit's checkpoint holds, and how a resumed fit picks up exactly where it stopped.

A checkpoint (``last.pt``, written atomically by :mod:`bayesprune.inference.checkpoint`)
holds the net's and guide's state, the optimizer and schedule, the position (epoch, step),
the history and ELBO trace, the units removed during the fit, and every process's torch RNG
state -- so that the batches (a function of ``(seed, epoch)``) and the guide's draws after
the resume are those the uninterrupted fit would have used. Under data parallelism only
process 0 writes it; every process reads it.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MAP
>>> net = sparsify(nn.Linear(3, 2), HALO())
>>> "sites" in signature(net, MAP(net))
True
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bayesprune.guides.base import Guide
from bayesprune.inference.callbacks import RESTORERS, FitState
from bayesprune.inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.unit_origin import original_sites, removed_units

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "bayesprune-fit-1"


def signature(net: BayesianNet, guide: Guide) -> str:
    """What a checkpoint must match: the sites as built (before any live removal of units,
    which checkpoints record and replay), the prior and the guide."""
    return json.dumps(
        {
            "sites": [[s.name, list(s.shape)] for s in original_sites(net)],
            "prior": net.prior.config(),
            "guide": guide.config(),
        },
        sort_keys=True,
    )


def save(
    state: FitState,
    ckpt_dir: Path,
    sign: str,
    device: torch.device,
    epoch_sum: Tensor | None = None,
) -> Path | None:
    """Write the checkpoint (process 0 only; every process must call this, since the RNG
    states and the loss sum are gathered); returns its path on process 0."""
    rep = state.replicas
    rngs = rep.gather(torch.get_rng_state())
    cuda_rngs = rep.gather(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None
    # every process's own loss sum, so that each resumes its own
    sums = None if epoch_sum is None else rep.gather(epoch_sum.detach().reshape(1))
    if not rep.main:
        rep.barrier()
        return None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "signature": sign,
        "net": state.net.state_dict(),
        "guide": state.guide.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "history": json.dumps(state.history),
        "elbo": list(state.elbo),
        "elbo_steps": list(state.elbo_steps),
        "world": rep.world,
        "rng": rngs[0],
        "rng_ranks": rngs,
        "cuda_rng_ranks": cuda_rngs,
        # units removed during the fit: {layer: original indices of the units left}
        "removed": removed_units(state.net),
        # mid-epoch: the loss summed so far, so the resumed epoch's mean counts every step
        "epoch_sum": None if sums is None else torch.cat(sums).cpu(),
    }
    path = save_checkpoint(payload, ckpt_dir)
    rep.barrier()
    return path


def restore(
    state: FitState,
    ckpt_dir: Path,
    sign: str,
    device: torch.device,
) -> Tensor | None:
    """Load the checkpoint into ``state``; returns the saved mid-epoch loss sum (or ``None``).

    :raises CheckpointError: for a missing, corrupt or foreign checkpoint, naming it.
    """
    ck = load_checkpoint(ckpt_dir)
    if ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {ckpt_dir}: unknown format {ck.get('format')!r}")
    if ck["signature"] != sign:
        raise CheckpointError(
            f"checkpoint {ckpt_dir} was written for a different model/prior/guide:\n"
            f"  checkpoint: {ck['signature']}\n  this fit:   {sign}"
        )
    try:  # first bring the fresh model to the checkpoint's shapes (e.g. removed units)
        for restorer in RESTORERS:
            restorer(state, ck)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir} does not fit this model: {e}") from None
    try:
        state.net.load_state_dict(ck["net"])
        state.guide.load_state_dict(ck["guide"])
        state.optimizer.load_state_dict(ck["optimizer"])
        if state.scheduler is not None and ck.get("scheduler") is not None:
            state.scheduler.load_state_dict(ck["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir} does not fit this model: {e}") from None
    state.net.module.to(device)
    state.guide.to(device)
    state.epoch = int(ck["epoch"])
    state.step_in_epoch = int(ck["step_in_epoch"])
    state.global_step = int(ck["global_step"])
    state.history = json.loads(ck["history"])
    state.elbo = list(ck["elbo"])
    state.elbo_steps = list(ck["elbo_steps"])
    _restore_rng(state, ck, device)
    sums = ck.get("epoch_sum")
    if state.step_in_epoch == 0 or not isinstance(sums, Tensor):
        return None
    sums = sums.reshape(-1)
    if sums.numel() != state.replicas.world:  # another number of processes: their mean
        return sums.mean()
    return sums[state.replicas.rank]


def _restore_rng(state: FitState, ck: dict[str, Any], device: torch.device) -> None:
    rank, world = state.replicas.rank, state.replicas.world
    rngs = ck.get("rng_ranks") or [ck["rng"]]
    if len(rngs) != world:
        log.warning(
            "resuming a fit of %d process(es) with %d: the data order is the same, the "
            "guide's random draws are not those of the uninterrupted fit",
            len(rngs),
            world,
        )
    torch.set_rng_state(rngs[rank % len(rngs)])
    cuda = ck.get("cuda_rng_ranks")
    if cuda and device.type == "cuda":
        torch.cuda.set_rng_state(cuda[rank % len(cuda)], device)
