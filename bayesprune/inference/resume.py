"""What a fit's checkpoint holds, and how a resumed fit picks up exactly where it stopped.

A checkpoint (``last.pt``, written atomically by :mod:`bayesprune.inference.checkpoint`)
holds the net's and guide's state, the optimizer and schedule, the position (epoch, step),
the history and ELBO trace, the units removed during the fit, and every process's torch RNG
state -- so that the batches (a function of ``(seed, epoch)``) and the guide's draws after
the resume are those the uninterrupted fit would have used. Under data parallelism only
process 0 writes it; every process reads it.

A resume must match the checkpoint's model (:func:`signature`: sites as built, prior,
guide) and the fit settings in :data:`GUARDED` (batch size, seed, learning rates,
optimizer, weight decay, schedule, training-set size, number of processes): with another
batch size, seed or data size the fit would silently continue at another data position,
and the optimizer's saved hyper-parameters would silently win over a new ``lr``. A
mismatch raises :class:`~bayesprune.errors.CheckpointError` naming each field with both
values, unless the field is named in ``fit(resume_override=(...))``: then the fit resumes
with this call's value (a new ``lr`` or ``role_lr`` takes effect at once, scaled by the
schedule's factor at the checkpoint; a new ``batch_size`` keeps the checkpoint's step
count within the epoch). ``epochs`` is not guarded: ``fit(..., epochs=E2, resume=True)``
from a checkpoint at epoch ``E < E2`` is how a fit is continued -- except that a cosine
schedule is recorded with its length, so lengthening a cosine fit needs
``resume_override=("schedule",)`` (the learning rate then follows the longer cosine).
Checkpoints written before settings were recorded (format ``bayesprune-fit-1``) resume
with no settings check.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MAP
>>> net = sparsify(nn.Linear(3, 2), HALO())
>>> "sites" in signature(net, MAP(net))
True
>>> saved = guarded_settings(batch_size=64, seed=0, lr=1e-3, n_data=600)
>>> now = guarded_settings(batch_size=128, seed=0, lr=1e-3, n_data=600)
>>> check_settings(saved, now, (), "runs/x")
Traceback (most recent call last):
...
bayesprune.errors.CheckpointError: checkpoint runs/x was written with other settings: batch_size 64 there, 128 now...
>>> check_settings(saved, now, check_override(("batch_size",)), "runs/x")  # resumes
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide
from bayesprune.inference.callbacks import RESTORERS, FitState
from bayesprune.inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.unit_origin import original_sites, removed_units

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "bayesprune-fit-2"
#: read too; they hold no fit settings, so a resume from one checks none
OLDER_FORMATS = ("bayesprune-fit-1",)

#: the fit settings a checkpoint records and a resume must match (see the module docstring)
GUARDED = (
    "batch_size",
    "seed",
    "lr",
    "role_lr",
    "optimizer",
    "weight_decay",
    "schedule",
    "n_data",
    "world",
)


def guarded_settings(
    *,
    batch_size: int | None,
    seed: int,
    lr: float,
    role_lr: dict[str, float] | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str | None = None,
    schedule_steps: int | None = None,
    n_data: int,
    world: int = 1,
) -> dict[str, Any]:
    """The :data:`GUARDED` settings of a fit, as plain JSON values. ``batch_size`` is the
    global batch of in-memory tensors or a loader's own (``None`` if it cannot tell); a
    schedule other than constant is recorded with its length in steps."""
    sched = None if schedule in (None, "constant") else {"name": schedule, "steps": schedule_steps}
    record = {
        "batch_size": batch_size,
        "seed": seed,
        "lr": float(lr),
        "role_lr": {k: float(v) for k, v in sorted((role_lr or {}).items())},
        "optimizer": optimizer,
        "weight_decay": float(weight_decay),
        "schedule": sched,
        "n_data": n_data,
        "world": world,
    }
    return json.loads(json.dumps(record))


def check_override(override: Any) -> tuple[str, ...]:
    """``fit``'s ``resume_override``, checked: a tuple of names from :data:`GUARDED`.

    >>> check_override(["lr", "seed"])
    ('lr', 'seed')
    >>> check_override("lr")
    Traceback (most recent call last):
    ...
    bayesprune.errors.ConfigError: fit: resume_override must be a tuple of setting names...
    """
    if isinstance(override, (str, bytes)) or not isinstance(override, (tuple, list, set)):
        raise ConfigError(
            "fit: resume_override must be a tuple of setting names, e.g. ('lr',); "
            f"got {override!r}; names: {', '.join(GUARDED)}"
        )
    unknown = [n for n in override if n not in GUARDED]
    if unknown:
        raise ConfigError(
            f"fit: resume_override names unknown setting(s) {unknown}; known: {', '.join(GUARDED)}"
        )
    return tuple(override)


def check_settings(
    saved: dict[str, Any] | None,
    now: dict[str, Any],
    override: tuple[str, ...],
    ckpt_dir: Any,
) -> None:
    """Raise :class:`CheckpointError` naming every :data:`GUARDED` setting that differs
    between the checkpoint (``saved``; ``None``: not recorded) and this fit, with both
    values, unless named in ``override``."""
    if saved is None:
        log.warning(
            "checkpoint %s records no fit settings (an older format): batch size, seed, "
            "learning rates, schedule and data size are not checked on this resume",
            ckpt_dir,
        )
        return
    differ = [n for n in GUARDED if n not in override and n in saved and saved[n] != now.get(n)]
    if not differ:
        return
    what = "; ".join(f"{n} {saved[n]!r} there, {now.get(n)!r} now" for n in differ)
    raise CheckpointError(
        f"checkpoint {ckpt_dir} was written with other settings: {what}. Resume with the "
        f"checkpoint's values, or pass resume_override={tuple(differ)!r} to continue with this "
        "call's (the fit then differs from an uninterrupted one)"
    )


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
    guarded: dict[str, Any] | None = None,
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
        # the fit settings a resume must match (GUARDED), as JSON
        "settings": json.dumps(guarded or {}),
        "net": state.net.state_dict(),
        "guide": state.guide.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict() if state.scheduler is not None else None,
        "epoch": state.epoch,
        "step_in_epoch": state.step_in_epoch,
        "global_step": state.global_step,
        "history": json.dumps(state.history),
        "stash": json.dumps(state.stash),
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
    guarded: dict[str, Any] | None = None,
    override: tuple[str, ...] = (),
) -> Tensor | None:
    """Load the checkpoint into ``state``; returns the saved mid-epoch loss sum (or ``None``).

    :param guarded: this fit's :func:`guarded_settings` (``None``: not checked).
    :param override: settings allowed to differ from the checkpoint's (this fit's win).
    :raises CheckpointError: for a missing, corrupt or foreign checkpoint, or one written
        with other settings, naming it.
    """
    ck = load_checkpoint(ckpt_dir)
    fmt = ck.get("format")
    if fmt != CHECKPOINT_FORMAT and fmt not in OLDER_FORMATS:
        raise CheckpointError(f"checkpoint {ckpt_dir}: unknown format {fmt!r}")
    if ck["signature"] != sign:
        raise CheckpointError(
            f"checkpoint {ckpt_dir} was written for a different model/prior/guide:\n"
            f"  checkpoint: {ck['signature']}\n  this fit:   {sign}"
        )
    if guarded is not None:
        check_settings(_saved_settings(ck, ckpt_dir), guarded, override, ckpt_dir)
    try:  # first bring the fresh model to the checkpoint's shapes (e.g. removed units)
        for restorer in RESTORERS:
            restorer(state, ck)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir} does not fit this model: {e}") from None
    # this fit's learning rates and weight decay per group, before the checkpoint's replace them
    fresh = [(g["lr"], g.get("weight_decay", 0.0)) for g in state.optimizer.param_groups]
    try:
        state.net.load_state_dict(ck["net"])
        state.guide.load_state_dict(ck["guide"])
        state.optimizer.load_state_dict(ck["optimizer"])
        if state.scheduler is not None and ck.get("scheduler") is not None:
            state.scheduler.load_state_dict(ck["scheduler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {ckpt_dir} does not fit this model: {e}") from None
    _keep_fresh_hyperparameters(state, fresh, new_lr="lr" in override or "role_lr" in override)
    state.net.module.to(device)
    state.guide.to(device)
    state.epoch = int(ck["epoch"])
    state.step_in_epoch = int(ck["step_in_epoch"])
    state.global_step = int(ck["global_step"])
    state.history = json.loads(ck["history"])
    state.stash = json.loads(ck.get("stash", "{}"))
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


def _saved_settings(ck: dict[str, Any], ckpt_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's recorded settings; ``None`` when it has none (an older format)."""
    if "settings" not in ck:
        return None
    try:
        saved = json.loads(ck["settings"])
    except (TypeError, ValueError):
        saved = None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {ckpt_dir}: its fit settings are not readable")
    return saved


def _keep_fresh_hyperparameters(
    state: FitState, fresh: list[tuple[float, float]], new_lr: bool
) -> None:
    """After the optimizer's state loaded: weight decay per group as this fit built it (a
    guarded setting; older checkpoints decayed every group), and with ``new_lr`` this
    fit's learning rates, times the schedule's factor reached at the checkpoint."""
    sched = state.scheduler
    for i, (g, (lr, wd)) in enumerate(zip(state.optimizer.param_groups, fresh, strict=True)):
        g["weight_decay"] = wd
        base = g.get("initial_lr", g["lr"])
        if not new_lr or lr == base:
            continue
        g["lr"] = lr * (g["lr"] / base) if base else lr
        if "initial_lr" in g:
            g["initial_lr"] = lr
        if sched is not None and i < len(sched.base_lrs):
            sched.base_lrs[i] = lr


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
