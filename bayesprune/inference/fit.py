"""The SVI loop: :func:`fit`.

One :func:`fit` for every prior and guide, on CPU or CUDA, in one process or many
(``torchrun``): mini-batches from in-memory tensors (index slices, the fast default) or any
``DataLoader``; one ``torch.optim`` optimizer over the guide's and the network's
deterministic parameters; the fused ELBO (equal to ``Trace_ELBO`` for priors without gates;
for gate priors a straight-through estimator of the same ELBO, see
:mod:`bayesprune.inference.losses`); Pyro validation only on the first step; no host
synchronisation inside the step loop except every ``log_every`` steps; per-epoch
validation; atomic checkpoints and exact resume.

The parts, in the order a fit runs them:

- :mod:`~bayesprune.inference.arguments` -- the keyword arguments, each checked;
- :mod:`~bayesprune.inference.distributed` -- the device and the processes of the fit;
- :mod:`~bayesprune.inference.preflight` -- the data source and the checks before training;
- :mod:`~bayesprune.inference.optimizer` -- the optimizer, a parameter group per role;
- :mod:`~bayesprune.inference.resume` -- checkpoints: what they hold, how a fit resumes;
- :mod:`~bayesprune.inference.loop` -- the epochs and the step;
- :mod:`~bayesprune.inference.progress` -- the bar, the epoch lines, the NaN guard.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bayesprune.data.batches import TensorBatches
from bayesprune.data.dataset import Split
from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.guides import default_guide
from bayesprune.guides.base import Guide
from bayesprune.inference import resume as checkpoints
from bayesprune.inference.arguments import check_fit_arguments
from bayesprune.inference.callbacks import FitState, call, fit_option
from bayesprune.inference.distributed import Replicas, resolve_device
from bayesprune.inference.loop import Loop, Settings
from bayesprune.inference.losses import loss_from_name
from bayesprune.inference.optimizer import make_optimizer, trained_tensors
from bayesprune.inference.preflight import check_network, training_source, validation_data
from bayesprune.inference.progress import NonFiniteLossError, objective_label
from bayesprune.inference.result import FitResult
from bayesprune.inference.resume import check_override
from bayesprune.inference.schedules import make_schedule
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.unit_origin import removed_units

__all__ = ["NonFiniteLossError", "fit"]

log = logging.getLogger(__name__)

#: how far apart the processes' seeds for the guide's draws are
RANK_SEED_STRIDE = 104_729


def fit(
    net: BayesianNet,
    data: Any,
    guide: Guide | None = None,
    *,
    epochs: int,
    device: str | torch.device | None = None,
    batch_size: int = 128,
    val: Any = None,
    n_data: int | None = None,
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
    resume_override: Sequence[str] = (),
    progress: bool = True,
    log_every: int = 50,
    validate: bool = True,
    remove_dead: bool | int = False,
    budget: Any = None,
) -> FitResult:
    """Fit the posterior of ``net`` by stochastic variational inference.

    :param net: the model, from :func:`bayesprune.sparsify`.
    :param data: the training data: a :class:`~bayesprune.data.Dataset` (its ``val`` split
        is scored every epoch), an ``(x, y)`` pair of tensors (both held on ``device`` and
        batched by index slices: the fast path), or a ``torch.utils.data.DataLoader`` (or any
        re-iterable of ``(x, y)`` batches: augmentation, data that does not fit in memory).
    :param guide: the variational family; default ``prior.default_guide``.
    :param epochs: total number of epochs: a resumed fit runs up to this many, so
        ``fit(..., epochs=E2, resume=True)`` continues a fit checkpointed at epoch ``E < E2``
        (and does nothing when ``E >= E2``). ``epochs=0`` is a logged no-op: the arguments,
        data and network are checked and the untrained result is returned (empty history).
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (default: where the net already
        is). The net and guide are moved there -- ``net.module`` **in place**: the caller's
        module lives on ``device`` after the fit -- and so are in-memory tensors once and
        loader batches as they come. Under ``torchrun``, ``"cuda"`` means the process's
        ``LOCAL_RANK`` GPU.
    :param batch_size: mini-batch size for in-memory tensors -- the *global* batch under
        data parallelism (each of N processes takes ``batch_size / N`` of it). A loader's own
        ``batch_size`` is per process, as in PyTorch. The likelihood is scaled by
        ``n_data / batch``.
    :param val: what each epoch is scored on (a ``Split``, an ``(x, y)`` pair or a loader);
        default the ``Dataset``'s ``val`` split.
    :param n_data: the training-set size the likelihood is scaled to, when a loader cannot
        tell it (default ``len(loader.dataset)``).
    :param lr: learning rate of the single ``torch.optim`` optimizer.
    :param role_lr: learning rates for guide parameters by site role, e.g.
        ``{"scale": 1e-2}`` for HALO's shrinkage scales; roles not named take the prior's
        default (``prior.default_role_lr``: gate priors train their gate probabilities at
        ``{"gate": 1e-2}``, the rate the gate benchmarks and the prototype use; at ``lr``
        = 1e-3 the gates hardly reach 0 or 1 in a few epochs), then ``lr``.
    :param optimizer: ``"adam"`` (default), ``"adamw"`` or ``"sgd"`` (momentum 0.9).
    :param weight_decay: the optimizer's weight decay, on network weights only: the guide's
        location of every ``weight`` site and the network's deterministic parameters; never
        on gate probabilities θ, shrinkage scales λ, jackpot scores or a mean-field guide's
        standard deviations (an L2 penalty there would be a prior the model does not
        declare). See :mod:`bayesprune.inference.optimizer`.
    :param schedule: ``None`` or ``"cosine"`` (per step, to zero at the end; needs a loader
        with a length).
    :param loss: ``"fused"`` (default, faster: Pyro's Trace_ELBO loss and gradients on the
        same draws for priors without gates; for gate priors an unbiased loss with a biased
        straight-through θ-gradient, see :mod:`bayesprune.inference.losses`) or ``"trace"``
        (Pyro's Trace_ELBO: unbiased score-function gate gradients, far noisier) or
        ``"compiled"`` (the fused loss through ``torch.compile``: equal to it on the same
        seed; about 10 s of compiling, so it pays only for long MAP fits, see
        :class:`~bayesprune.inference.losses.CompiledELBO`).
    :param seed: seeds the data order (a pure function of ``(seed, epoch)``) and the torch
        RNG the guide draws from (process ``r`` of a data-parallel fit uses
        ``seed + 104729 r``). The fit runs under ``torch.random.fork_rng``: it seeds and
        draws from torch's global RNG (so dropout, transforms and loaders inside the fit
        draw from the fit's stream), and the caller's global RNG state (CPU, and the fit's
        CUDA device) is restored when ``fit`` returns or raises.
    :param callbacks: objects with ``on_fit_start / on_epoch_start / on_step_end /
        on_epoch_end`` (:mod:`bayesprune.inference.callbacks`); the prior's own
        (``prior.fit_callbacks()``) run first.
    :param checkpoint: a folder; ``last.pt`` there is rewritten atomically every epoch
        (and every ``checkpoint_every`` steps if given), by process 0 only.
    :param resume: continue from ``checkpoint/last.pt`` -- exactly (same batches, same
        draws) for in-memory tensors, and for loaders whose order is drawn from torch's RNG
        (``shuffle=True``, a seeded ``generator=``, or a ``DistributedSampler``) and whose
        randomness is drawn from torch's RNG (torchvision transforms). The batches of the
        interrupted epoch before the checkpoint are loaded again and skipped. The checkpoint
        must have been written with the same ``batch_size``, ``seed``, ``lr``, ``role_lr``,
        ``optimizer``, ``weight_decay``, ``schedule`` (and, for a cosine one, its length),
        training-set size and number of processes; a difference raises
        :class:`~bayesprune.errors.CheckpointError` naming each field with both values
        (:mod:`bayesprune.inference.resume`).
    :param resume_override: settings named here may differ from the checkpoint's, e.g.
        ``("lr",)`` or ``("schedule",)`` to lengthen a cosine fit; this call's values are
        used from the resume on (the fit is then not the uninterrupted one).
    :param progress: show a tqdm bar (process 0 only).
    :param log_every: steps between host syncs (ELBO trace, NaN guard, bar update). The bar
        and the epoch lines call the per-example loss ``-elbo/n`` (negative ELBO) when the
        guide spreads over some site, and ``-log p/n`` (negative log joint density at the
        guide's point, not an ELBO) when every site is a point mass, e.g. a MAP guide
        without gates; ``history[i]["loss"]`` and ``FitResult.elbo`` hold it either way.
    :param validate: score the validation data after every epoch.
    :param remove_dead: at the end of every epoch, physically remove the units whose gate
        probability θ is exactly 0 (:class:`~bayesprune.pruning.RemoveDeadUnits`;
        unit-gate priors only, a no-op for others), so later epochs run on a smaller
        network; ``history[i]["units"]`` shows the units alive per layer and
        ``history[i]["removed"]`` those removed. Checkpoints record the removals
        (original indexing) and ``resume`` replays them on a freshly built net. An integer
        ``N`` also removes them every ``N`` optimizer steps (counted over the whole fit), so
        units that die early stop costing before the epoch ends; each check reads the gate
        probabilities back from the device (one host sync per ``N`` steps).
    :param budget: a :class:`~bayesprune.budget.Budget` to end at, e.g.
        ``Budget(flops=0.1)``: the prior's strength becomes a multiplier the fit adapts
        every few steps so that the posterior shrinks to the budget, and late in the fit the
        posterior is cut to it exactly and held there while the weights go on training
        (:mod:`bayesprune.pruning.budget_control`; pass a
        :class:`~bayesprune.pruning.BudgetControl` for other controller settings). The
        history gets the multiplier's trajectory (``budget``, ``budget_trace``).
    :returns: :class:`~bayesprune.inference.FitResult`. At the end, ``net.module`` holds the
        posterior point estimate (``guide.point()``) of every weight a site replaces
        (:func:`write_back`), so it is the fitted network; the guide holds the posterior.
    :raises NonFiniteLossError: when the loss becomes NaN/Inf; the last checkpoint stays intact.

    **Data parallelism.** Under ``torchrun --nproc_per_node=N`` (or with a process group the
    caller initialised) every process runs this same call on its own share of the data:
    in-memory tensors are sharded by index, a ``DataLoader`` gets a ``DistributedSampler``;
    the gradients of every trained tensor are averaged over the processes after each
    backward (gloo on CPU, nccl on CUDA), the likelihood is scaled to the global
    training-set size, BatchNorm statistics are averaged at each epoch's end, every process
    removes the same dead units (the same θ), and process 0 alone prints and writes
    checkpoints. With in-memory tensors and a MAP guide the fit equals the one-process fit
    with the same ``batch_size`` (up to float summation order).

    >>> import torch.nn as nn
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from bayesprune import sparsify
    >>> from bayesprune.priors import HALO
    >>> from bayesprune.data import synthetic_classification
    >>> data = synthetic_classification(n_train=64, input_shape=(4,), n_classes=2)
    >>> net = sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), HALO())
    >>> result = fit(net, data, epochs=2, batch_size=16, progress=False)
    >>> len(result.history)
    2
    >>> loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=16, shuffle=True)
    >>> result = fit(net, loader, epochs=1, val=data.val, progress=False)
    >>> sorted(result.final)[:3]
    ['epoch', 'kept', 'loss']
    """
    if not isinstance(net, BayesianNet):
        raise UnsupportedError(
            f"fit: net must be a BayesianNet (use sparsify), got {type(net).__name__}"
        )
    override = check_override(resume_override)
    if override and not resume:
        raise ConfigError("fit: resume_override is only meaningful with resume=True")
    check_fit_arguments(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        role_lr=role_lr,
        log_every=log_every,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        remove_dead=remove_dead,
        n_data=n_data,
    )
    role_lr = {**net.prior.default_role_lr, **(role_lr or {})} or None
    callbacks = [*net.prior.fit_callbacks(), *callbacks]
    if budget is not None:  # a Budget, or a controller built from one
        callbacks.insert(
            0, budget if hasattr(budget, "on_step_end") else fit_option("budget", budget)
        )
    if remove_dead is True:
        callbacks.insert(0, fit_option("remove_dead"))
    elif remove_dead:  # every so many steps, and at the end of every epoch
        callbacks.insert(0, fit_option("remove_dead", remove_dead))
    loss_fn = loss_from_name(loss)
    dev = resolve_device(device, net.device)
    # the caller's RNG state comes back after the fit (it seeds and draws from its own)
    with torch.random.fork_rng(devices=_cuda_devices(dev)):
        return _fit(
            net,
            data,
            guide,
            dev=dev,
            epochs=epochs,
            batch_size=batch_size,
            val=val,
            n_data=n_data,
            lr=lr,
            role_lr=role_lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            schedule=schedule,
            loss_fn=loss_fn,
            seed=seed,
            callbacks=callbacks,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
            override=override,
            progress=progress,
            log_every=log_every,
            validate=validate,
        )


def _cuda_devices(dev: torch.device) -> list[int]:
    """The CUDA device whose RNG ``fit`` forks (none for a CPU fit)."""
    if dev.type != "cuda":
        return []
    return [dev.index if dev.index is not None else torch.cuda.current_device()]


def _fit(
    net: BayesianNet,
    data: Any,
    guide: Guide | None,
    *,
    dev: torch.device,
    epochs: int,
    batch_size: int,
    val: Any,
    n_data: int | None,
    lr: float,
    role_lr: dict[str, float] | None,
    optimizer: str,
    weight_decay: float,
    schedule: str | None,
    loss_fn: Any,
    seed: int,
    callbacks: list[Any],
    checkpoint: str | os.PathLike | None,
    checkpoint_every: int | None,
    resume: bool,
    override: tuple[str, ...],
    progress: bool,
    log_every: int,
    validate: bool,
) -> FitResult:
    """:func:`fit` after its arguments are checked, under its own RNG."""
    replicas = Replicas.from_environment(dev)
    source = training_source(
        data, batch_size=batch_size, device=dev, replicas=replicas, n_data=n_data
    )
    val = validation_data(data, val) if validate else None
    replicas.check_same("the training-set size", [source.n_data])
    net.module.to(dev)
    guide = default_guide(net) if guide is None else guide
    guide.to(dev)
    x0, y0 = source.first()
    if net.example_input is None:
        net.example_input = x0[:1].detach().clone()
    elif isinstance(net.example_input, Tensor):  # traced with the net (remove_dead)
        net.example_input = net.example_input.to(dev)
    # in-memory targets are checked whole; a loader's by its first batch
    check_network(net, guide, x0, source.split.y if isinstance(source, TensorBatches) else y0)
    if isinstance(val, Split):  # in-memory validation data too, before an epoch is spent
        check_network(net, guide, val.x[:2].to(dev), val.y.to(dev), split="validation")

    state = _initial_state(
        net, guide, data, replicas, optimizer, lr, role_lr, weight_decay, schedule, epochs, source
    )
    state.val, state.loss_fn = val, loss_fn
    state.epochs, state.steps_per_epoch = epochs, source.length
    ckpt_dir = Path(checkpoint) if checkpoint is not None else None
    guarded = checkpoints.guarded_settings(
        batch_size=_batch_size(source, batch_size),
        seed=seed,
        lr=lr,
        role_lr=role_lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        schedule=schedule,
        schedule_steps=_schedule_steps(epochs, source),
        n_data=source.n_data,
        world=replicas.world,
    )
    settings = Settings(
        epochs=epochs,
        seed=seed,
        loss_fn=loss_fn,
        device=dev,
        log_every=log_every,
        checkpoint=ckpt_dir,
        checkpoint_every=checkpoint_every,
        signature=checkpoints.signature(net, guide),
        progress=progress and replicas.main,
        val=val,
        loss_label=objective_label(guide),
        guarded=guarded,
    )
    resumed_sum: Tensor | None = None  # the loss summed over the resumed epoch's earlier steps
    if resume:
        assert ckpt_dir is not None
        resumed_sum = checkpoints.restore(
            state, ckpt_dir, settings.signature, dev, guarded=guarded, override=override
        )
        log.info("resumed from %s at epoch %d step %d", ckpt_dir, state.epoch, state.step_in_epoch)
        if state.epoch >= epochs:
            log.info(
                "fit: the checkpoint is at epoch %d and epochs=%d: nothing left to train "
                "(pass a larger epochs to continue)",
                state.epoch,
                epochs,
            )
    else:
        torch.manual_seed(seed + RANK_SEED_STRIDE * replicas.rank)
        # every process starts from process 0's values, as DistributedDataParallel does
        replicas.broadcast([*trained_tensors(state.optimizer), *net.module.buffers()])
        if epochs == 0:
            log.info(
                "fit: epochs=0: nothing trained; the data and network were checked and the "
                "untrained result is returned"
            )

    call(callbacks, "on_fit_start", state)
    loop = Loop(state, source, settings, callbacks)
    stopped = loop.run(resumed_sum)
    write_back(net, state.guide)
    return FitResult(
        net=net,
        guide=state.guide,
        elbo=state.elbo,
        elbo_steps=state.elbo_steps,
        history=state.history,
        checkpoint=loop.checkpoint_path,
        stopped_early=stopped,
        removed=removed_units(net),
    )


@torch.no_grad()
def write_back(net: BayesianNet, guide: Guide) -> None:
    """Copy the posterior point estimate (``guide.point()``) of every parameter a site
    replaces into ``net.module``, in place, so that the module is the fitted network (its
    gates, if any, are not applied: see ``collapse``/``extract``). Priors whose module
    weights are data (``prior.writes_back = False``: a jackpot's frozen weights) are left
    alone."""
    if not net.prior.writes_back:
        return
    point = guide.point()
    for s in net.replacing:
        net.module.get_parameter(s.replaces).copy_(point[s.name])


def _initial_state(
    net: BayesianNet,
    guide: Guide,
    data: Any,
    replicas: Replicas,
    optimizer: str,
    lr: float,
    role_lr: dict[str, float] | None,
    weight_decay: float,
    schedule: str | None,
    epochs: int,
    source: Any,
) -> FitState:
    def new_optimizer() -> torch.optim.Optimizer:
        return make_optimizer(
            net, guide, optimizer, lr=lr, role_lr=dict(role_lr or {}), weight_decay=weight_decay
        )

    opt = new_optimizer()
    if schedule not in (None, "constant") and source.length is None:
        raise ConfigError(
            f"fit: schedule={schedule!r} needs the number of batches per epoch, and this "
            "loader has no len()"
        )
    steps = _schedule_steps(epochs, source)
    return FitState(
        net=net,
        guide=guide,
        data=data,
        optimizer=opt,
        make_optimizer=new_optimizer,
        scheduler=make_schedule(opt, schedule, steps),
        replicas=replicas,
    )


def _schedule_steps(epochs: int, source: Any) -> int:
    """The steps a schedule spans: every step of every epoch."""
    return epochs * (source.length or 1)


def _batch_size(source: Any, batch_size: int) -> int | None:
    """The batch a resume must match: ``batch_size`` for in-memory tensors (the global
    batch), a loader's own ``batch_size`` (per process; ``None`` when it has none)."""
    if isinstance(source, TensorBatches):
        return batch_size
    size = getattr(getattr(source, "loader", None), "batch_size", None)
    return size if isinstance(size, int) else None
