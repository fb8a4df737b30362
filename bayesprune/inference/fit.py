"""The SVI loop.

One :func:`fit` for every prior and guide, on CPU or CUDA: index-slice
mini-batches from in-memory tensors, one ``torch.optim`` optimizer over the
guide's and the network's deterministic parameters, the fused ELBO (equal to
``Trace_ELBO`` for priors without gates; for gate priors a straight-through
estimator of the same ELBO, see :mod:`bayesprune.inference.losses`), Pyro
validation only on
the first step, no host synchronisation inside the step loop except every
``log_every`` steps (progress, NaN guard), per-epoch validation, atomic
checkpoints and exact resume.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor
from tqdm.auto import tqdm

from bayesprune.data.dataset import Dataset, Split
from bayesprune.guides import default_guide
from bayesprune.guides.base import Guide
from bayesprune.inference.callbacks import FitState, RemoveDeadUnits, call
from bayesprune.inference.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from bayesprune.inference.evaluate import evaluate
from bayesprune.inference.losses import loss_from_name
from bayesprune.inference.result import FitResult
from bayesprune.inference.schedules import make_schedule
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.live import original_sites, removed_units, replay_removals

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "bayesprune-fit-1"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message says where and which checkpoint is intact."""


def _as_dataset(data: Dataset | tuple[Tensor, Tensor]) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return Dataset(train=Split(torch.as_tensor(data[0]), torch.as_tensor(data[1])))
    raise TypeError(
        f"fit: data must be a bayesprune Dataset or an (x, y) pair, got {type(data).__name__}"
    )


def _check_data(data: Dataset) -> None:
    for name in ("train", "val"):
        s = getattr(data, name)
        if s is None:
            continue
        if len(s) == 0:
            raise ValueError(f"fit: the {name} split is empty")
        if s.x.is_floating_point() and not bool(torch.isfinite(s.x).all()):
            bad = int((~torch.isfinite(s.x)).flatten(1).any(1).sum())
            raise ValueError(f"fit: the {name} split has NaN/Inf inputs in {bad} examples")
        if s.y.is_floating_point() and not bool(torch.isfinite(s.y).all()):
            raise ValueError(f"fit: the {name} split has NaN/Inf targets")


def _make_optimizer(
    params: list[dict[str, Any]], name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if name not in kinds:
        raise ValueError(f"fit: unknown optimizer {name!r}; known: {sorted(kinds)}")
    kw: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if name == "sgd":
        kw["momentum"] = 0.9
    else:
        kw["fused"] = True  # one kernel per step for all parameters (CPU and CUDA)
    return kinds[name](params, **kw)


def _signature(net: BayesianNet, guide: Guide) -> str:
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


def fit(
    net: BayesianNet,
    data: Dataset | tuple[Tensor, Tensor],
    guide: Guide | None = None,
    *,
    epochs: int,
    device: str | torch.device | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    role_lr: dict[str, float] | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str | None = None,
    loss: str = "fused",
    seed: int = 0,
    callbacks: Sequence[Any] = (),
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 50,
    validate: bool = True,
    remove_dead: bool = False,
) -> FitResult:
    """Fit the posterior of ``net`` by stochastic variational inference.

    :param net: the model, from :func:`bayesprune.sparsify`.
    :param data: a :class:`~bayesprune.data.Dataset` (its ``val`` split is scored every
        epoch) or an ``(x, y)`` pair of training tensors.
    :param guide: the variational family; default ``prior.default_guide``.
    :param epochs: total number of epochs (a resumed fit runs up to this many).
    :param device: ``"cpu"``, ``"cuda"``, ... (default: where the net already is). The net,
        guide and data are moved there.
    :param batch_size: mini-batch size; the likelihood is scaled by ``n_train / batch``.
    :param lr: learning rate of the single ``torch.optim`` optimizer.
    :param role_lr: learning rates for guide parameters by site role, e.g.
        ``{"scale": 1e-2}`` for HALO's shrinkage scales (default: ``lr`` for all).
    :param optimizer: ``"adam"`` (default), ``"adamw"`` or ``"sgd"`` (momentum 0.9).
    :param schedule: ``None`` or ``"cosine"`` (per step, to zero at the end).
    :param loss: ``"fused"`` (default, faster: Pyro's Trace_ELBO loss and gradients on the
        same draws for priors without gates; for gate priors an unbiased loss with a biased
        straight-through θ-gradient, see :mod:`bayesprune.inference.losses`) or ``"trace"``
        (Pyro's Trace_ELBO: unbiased score-function gate gradients, far noisier).
    :param seed: seeds the data order and the guide's random draws.
    :param callbacks: objects with ``on_fit_start / on_epoch_start / on_epoch_end``.
    :param checkpoint: a folder; ``last.pt`` there is rewritten atomically every epoch
        (and every ``checkpoint_every`` steps if given).
    :param resume: continue from ``checkpoint/last.pt`` (exactly: same data order, RNG).
    :param progress: show a tqdm bar.
    :param log_every: steps between host syncs (ELBO trace, NaN guard, bar update).
    :param validate: score the ``val`` split after every epoch.
    :param remove_dead: at the end of every epoch, physically remove the units whose gate
        probability θ is exactly 0 (:class:`~bayesprune.inference.callbacks.RemoveDeadUnits`;
        unit-gate priors only, a no-op for others), so later epochs run on a smaller
        network; ``history[i]["units"]`` shows the units alive per layer and
        ``history[i]["removed"]`` those removed. Checkpoints record the removals
        (original indexing) and ``resume`` replays them on a freshly built net.
    :returns: :class:`~bayesprune.inference.FitResult`.
    :raises NonFiniteLossError: when the loss becomes NaN/Inf; the last checkpoint stays intact.

    >>> import torch.nn as nn
    >>> from bayesprune import sparsify
    >>> from bayesprune.priors import HALO
    >>> from bayesprune.data import synthetic_classification
    >>> data = synthetic_classification(n_train=64, input_shape=(4,), n_classes=2)
    >>> net = sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), HALO())
    >>> result = fit(net, data, epochs=2, batch_size=16, progress=False)
    >>> len(result.history)
    2
    """
    if not isinstance(net, BayesianNet):
        raise TypeError(f"fit: net must be a BayesianNet (use sparsify), got {type(net).__name__}")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"fit: epochs must be an integer >= 0, got {epochs!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
        raise ValueError(f"fit: lr must be a finite number > 0, got {lr!r}")
    for role, v in (role_lr or {}).items():
        if not (isinstance(v, (int, float)) and 0 < v < math.inf):
            raise ValueError(f"fit: role_lr[{role!r}] must be a finite number > 0, got {v!r}")
    if not isinstance(log_every, int) or log_every < 1:
        raise ValueError(f"fit: log_every must be a positive integer, got {log_every!r}")
    if checkpoint_every is not None and (
        not isinstance(checkpoint_every, int) or checkpoint_every < 1
    ):
        raise ValueError(
            f"fit: checkpoint_every must be a positive integer, got {checkpoint_every!r}"
        )
    if resume and checkpoint is None:
        raise ValueError("fit: resume=True needs checkpoint=<folder>")
    if not isinstance(remove_dead, bool):
        raise ValueError(f"fit: remove_dead must be True or False, got {remove_dead!r}")
    callbacks = [RemoveDeadUnits(), *callbacks] if remove_dead else list(callbacks)

    data = _as_dataset(data)
    _check_data(data)
    dev = torch.device(device) if device is not None else net.device
    net.module.to(dev)
    if guide is None:
        guide = default_guide(net)
    guide.to(dev)
    data = data.to(dev)
    if net.example_input is None:
        net.example_input = data.train.x[:1].detach().clone()
    elif isinstance(net.example_input, torch.Tensor):  # traced with the net (remove_dead)
        net.example_input = net.example_input.to(dev)
    with torch.no_grad():
        out_dim = net.predict(guide.point(), data.train.x[:2]).shape[-1]
    net.likelihood.check_targets(data.train.y, out_dim)

    loss_fn = loss_from_name(loss)
    n_train = data.n_train
    n_batches = data.num_batches(batch_size)

    role_lr = dict(role_lr or {})

    def make_optimizer() -> torch.optim.Optimizer:
        groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for role, params in guide.parameters_by_role().items():
            params = [p for p in params if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                groups.append({"params": params, "lr": role_lr.get(role, lr), "role": role})
        rest = [p for p in guide.parameters() if p.requires_grad and id(p) not in seen]
        rest += [p for _, p in net.deterministic_parameters() if p.requires_grad]
        if rest:
            groups.append({"params": rest, "lr": lr, "role": "deterministic"})
        return _make_optimizer(groups, optimizer, lr, weight_decay)

    opt = make_optimizer()
    state = FitState(
        net=net,
        guide=guide,
        data=data,
        optimizer=opt,
        make_optimizer=make_optimizer,
        scheduler=make_schedule(opt, schedule, epochs * n_batches),
    )
    ckpt_dir = Path(checkpoint) if checkpoint is not None else None
    signature = _signature(net, guide)
    resumed_sum: Tensor | None = None  # the loss summed over the resumed epoch's earlier steps
    if resume:
        resumed_sum = _restore(state, ckpt_dir, signature, dev)
        log.info("resumed from %s at epoch %d step %d", ckpt_dir, state.epoch, state.step_in_epoch)
    else:
        torch.manual_seed(seed)

    result = FitResult(net=net, guide=guide)
    call(list(callbacks), "on_fit_start", state)
    validated = False
    was_validating = pyro.infer.util.is_validation_enabled()
    stopped = False
    try:
        while state.epoch < epochs and not stopped:
            call(list(callbacks), "on_epoch_start", state)
            net.module.train()
            guide.train()
            t0 = time.perf_counter()
            epoch_sum = torch.zeros((), device=dev)
            if resumed_sum is not None:
                epoch_sum, resumed_sum = resumed_sum.to(dev), None
            window = torch.zeros((), device=dev)
            in_window = 0
            bar = tqdm(
                total=n_batches,
                initial=state.step_in_epoch,
                desc=f"epoch {state.epoch + 1}/{epochs}",
                disable=not progress or not _interactive(),
                leave=False,
                dynamic_ncols=True,
            )
            batches = data.batches(
                batch_size, epoch=state.epoch, seed=seed, start=state.step_in_epoch
            )
            for xb, yb in batches:
                if not validated:
                    pyro.enable_validation(True)
                loss_value = loss_fn(net, guide, xb, yb, n_train) / n_train
                state.optimizer.zero_grad(set_to_none=True)
                loss_value.backward()
                if not validated:
                    if not bool(torch.isfinite(loss_value)):
                        raise NonFiniteLossError(
                            f"fit: the loss is {float(loss_value.detach())} at the first step; check the data "
                            "and hyper-parameters (nothing was changed, no checkpoint written)"
                        )
                    pyro.enable_validation(False)
                    validated = True
                state.optimizer.step()
                state.guide.project_()
                if state.scheduler is not None:
                    state.scheduler.step()
                detached = loss_value.detach()
                window = window + detached
                epoch_sum = epoch_sum + detached
                in_window += 1
                state.step_in_epoch += 1
                state.global_step += 1
                bar.update(1)
                save_now = (
                    ckpt_dir is not None
                    and checkpoint_every is not None
                    and state.global_step % checkpoint_every == 0
                    and state.step_in_epoch < n_batches
                )
                if in_window == log_every or state.step_in_epoch == n_batches or save_now:
                    mean = float(window) / in_window  # the one host sync per window
                    _guard(mean, state, ckpt_dir)
                    state.elbo.append(mean)
                    state.elbo_steps.append(state.global_step)
                    bar.set_postfix(_postfix(mean, state.history), refresh=False)
                    window = torch.zeros((), device=dev)
                    in_window = 0
                if save_now:  # the window was just checked finite
                    result.checkpoint = _save(state, ckpt_dir, signature, epoch_sum)
            bar.close()
            seconds = time.perf_counter() - t0
            record: dict[str, Any] = {
                "epoch": state.epoch + 1,
                "loss": float(epoch_sum) / max(state.step_in_epoch, 1),
                "seconds": seconds,
                # learning rate per parameter role at the end of the epoch (after the schedule)
                "lr": {
                    g.get("role", f"group{i}"): float(g["lr"])
                    for i, g in enumerate(state.optimizer.param_groups)
                },
            }
            if validate and data.val is not None:
                record.update({f"val_{k}": v for k, v in evaluate(net, guide, data.val).items()})
            point = guide.point()
            kept = net.prior.kept_fraction(net, point)
            if kept is not None:
                record["kept"] = kept * _unit_share(net)
            units = getattr(net.prior, "units_alive", None)
            if units is not None:
                record["units"] = units(net, point)
            state.history.append(record)
            log.info("epoch %s", record)
            if progress:
                tqdm.write(_format_record(record, epochs))
            state.epoch += 1
            state.step_in_epoch = 0
            stopped = call(list(callbacks), "on_epoch_end", state)
            if ckpt_dir is not None:
                result.checkpoint = _save(state, ckpt_dir, signature)
    finally:
        pyro.enable_validation(was_validating)
    result.elbo, result.elbo_steps, result.history = state.elbo, state.elbo_steps, state.history
    result.guide = state.guide
    result.stopped_early = stopped
    result.removed = removed_units(net)
    return result


def _unit_share(net: BayesianNet) -> float:
    """Gated units now / gated units as built: turns a gate prior's kept fraction of the
    current network into one of the original network after live removal (removed units
    were dead, so they count as not kept)."""
    now = sum(s.numel for s in net.gates)
    built = sum(s.numel for s in original_sites(net) if s.role == "gate")
    return now / built if built and now != built else 1.0


def _postfix(loss: float, history: list[dict[str, Any]]) -> dict[str, str]:
    """The bar's live figures: the ELBO window, and the last epoch's validation accuracy,
    kept fraction and units alive."""
    out = {"-elbo/n": f"{loss:.4g}"}
    if history:
        last = history[-1]
        if "val_accuracy" in last:
            out["val"] = f"{100 * last['val_accuracy']:.1f}%"
        if "kept" in last:
            out["kept"] = f"{100 * last['kept']:.1f}%"
        if "units" in last:
            out["units"] = "-".join(str(v) for v in last["units"].values())
    return out


def _interactive() -> bool:
    """The step bar only goes to a terminal; logs and CI get one line per epoch."""
    return sys.stderr.isatty()


def _format_record(r: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}", f"-elbo/n {r['loss']:.4f}", f"{r['seconds']:.1f}s"]
    if "val_accuracy" in r:
        parts.append(f"val acc {100 * r['val_accuracy']:.2f}%")
    if "kept" in r:
        parts.append(f"kept {100 * r['kept']:.2f}%")
    if "units" in r:
        parts.append("units " + "-".join(str(v) for v in r["units"].values()))
    return "  ".join(parts)


def _guard(mean: float, state: FitState, ckpt_dir: Path | None) -> None:
    if math.isfinite(mean):
        return
    where = f"epoch {state.epoch + 1}, step {state.step_in_epoch}"
    if ckpt_dir is not None and (ckpt_dir / "last.pt").exists():
        keep = f"the last good checkpoint {ckpt_dir / 'last.pt'} is intact (resume=True continues from it)"
    else:
        keep = "no checkpoint was written (pass checkpoint=<folder> to keep progress)"
    raise NonFiniteLossError(
        f"fit: the loss became {mean} at {where}; stopping. {keep}. Lower the learning rate "
        "or check the data and hyper-parameters."
    )


def _save(state: FitState, ckpt_dir: Path, signature: str, epoch_sum: Tensor | None = None) -> Path:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "signature": signature,
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
        "rng": torch.get_rng_state(),
        # units removed during the fit: {layer: original indices of the units left}
        "removed": removed_units(state.net),
        # mid-epoch: the loss summed so far, so the resumed epoch's mean counts every step
        "epoch_sum": None if epoch_sum is None else epoch_sum.detach().cpu(),
    }
    if torch.cuda.is_available():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    return save_checkpoint(payload, ckpt_dir)


def _restore(
    state: FitState, ckpt_dir: Path | None, signature: str, device: torch.device
) -> Tensor | None:
    """Load the checkpoint into ``state``; returns the saved mid-epoch loss sum (or ``None``)."""
    assert ckpt_dir is not None
    ck = load_checkpoint(ckpt_dir)
    if ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {ckpt_dir}: unknown format {ck.get('format')!r}")
    if ck["signature"] != signature:
        raise CheckpointError(
            f"checkpoint {ckpt_dir} was written for a different model/prior/guide:\n"
            f"  checkpoint: {ck['signature']}\n  this fit:   {signature}"
        )
    try:  # first cut the fresh net down to the checkpoint's shapes (a no-op if it is already)
        replay_removals(state.net, state.guide, ck.get("removed") or {}, state.optimizer)
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
    torch.set_rng_state(ck["rng"])
    if "cuda_rng" in ck and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ck["cuda_rng"])
    epoch_sum = ck.get("epoch_sum")
    return epoch_sum if state.step_in_epoch > 0 and isinstance(epoch_sum, Tensor) else None
