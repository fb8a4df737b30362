"""Fits run by ``tests/inference/test_distributed.py`` under ``torchrun`` (and alone).

``python ddp_fit.py OUT`` writes ``OUT/<case>-rank<r>.pt`` for every case: the final state
of net and guide, the examples each process saw in the first epoch, the history, the units
removed. Run with ``torchrun --nproc_per_node=2`` for the data-parallel fits, and with the
repository on ``PYTHONPATH`` (for ``tests.helpers``; the test sets it).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from bayesprune import fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.guides import MAP
from bayesprune.inference import evaluate
from bayesprune.inference.distributed import Replicas
from bayesprune.methods import train
from bayesprune.priors import HALO, HyperSparse, Jackpot, UnitGates
from tests import helpers  # importable: torchrun runs this with PYTHONPATH=<repo>

N_TRAIN, GLOBAL_BATCH = 192, 32  # 6 steps per epoch


def data():
    return synthetic_classification(N_TRAIN, 32, 0, input_shape=(8,), n_classes=3, seed=0)


def mlp() -> torch.nn.Module:
    torch.manual_seed(1)
    return helpers.mlp(8, 16, 3)


class Seen:
    """Records the first input feature of every training example the net sees in epoch 1
    (the features are continuous, so they identify the examples)."""

    def __init__(self, net) -> None:
        self.ids: list[float] = []
        net.module[0].register_forward_pre_hook(self.record)
        self.epoch = 0

    def record(self, module, args) -> None:
        if module.training and self.epoch == 0 and torch.is_grad_enabled():
            self.ids.extend(args[0][:, 0].tolist())

    def on_epoch_end(self, state) -> None:
        self.epoch += 1


class Killed(Exception):
    pass


def kill_at(step: int):
    """Make the next fit's loss raise at its ``step``-th call, on every process alike."""
    fit_module = importlib.import_module("bayesprune.inference.fit")
    original = fit_module.loss_from_name

    def patched(name):
        estimator, calls = original(name), [0]

        def loss(*args, **kwargs):
            calls[0] += 1
            if calls[0] == step:
                fit_module.loss_from_name = original
                raise Killed
            return estimator(*args, **kwargs)

        return loss

    fit_module.loss_from_name = patched


def halo_tensors(out: Path, **kw):
    net = sparsify(mlp(), HALO(1e-3, 1e-3))
    guide = MAP(net)
    seen = Seen(net)
    result = fit(
        net,
        data(),
        guide,
        epochs=2,
        batch_size=GLOBAL_BATCH,
        lr=1e-2,
        progress=False,
        callbacks=[seen],
        **kw,
    )
    return net, guide, result, seen


def gates_loader(out: Path):
    d = data()
    loader = DataLoader(TensorDataset(d.train.x, d.train.y), batch_size=16, shuffle=True)
    torch.manual_seed(2)
    net = sparsify(mlp(), UnitGates(gamma=3.0), example_input=torch.zeros(1, 8))
    seen = Seen(net)
    result = fit(
        net,
        loader,
        epochs=4,
        val=d.val,
        lr=2e-2,
        role_lr={"gate": 0.2},
        progress=False,
        remove_dead=True,
        callbacks=[seen],
    )
    return net, result.guide, result, seen


def jackpot_search(out: Path):
    """A lottery-jackpot mask search (restricted swaps decided on each process's batch)
    over an MLP pre-trained by the toolkit, both under data parallelism."""
    dense = mlp()
    train(dense, data(), epochs=2, batch_size=GLOBAL_BATCH, lr=1e-2)
    net = sparsify(dense, Jackpot(sparsity=0.8))
    result = fit(net, data(), epochs=2, batch_size=GLOBAL_BATCH, lr=1e-2, progress=False)
    return net, result.guide, result, None


def hypersparse_sharded_val(out: Path, sharded: bool = True):
    """ART whose stop rule scores a validation loader each process reads a different half of
    (``sharded=False``: the same fit scored on the validation tensors)."""
    d = data()
    ds = TensorDataset(d.val.x, d.val.y)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    sampler = DistributedSampler(ds, shuffle=False) if world > 1 else None
    val = DataLoader(ds, batch_size=5, sampler=sampler) if sharded else d.val
    prior = HyperSparse(
        sparsity=0.9, lambda_init=1e-2, eta=2.0, warmup=2, window=1, finetune=1,
        tolerance=0.15, max_regularise=8,
    )  # fmt: skip
    net = sparsify(mlp(), prior)
    result = fit(net, d, epochs=12, batch_size=GLOBAL_BATCH, lr=1e-2, val=val, progress=False)
    return net, result.guide, result, None


def sharded_validation(net, guide) -> dict[str, float]:
    """The validation scores from a loader each process reads a different half of."""
    val = data().val
    ds = TensorDataset(val.x, val.y)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    sampler = DistributedSampler(ds, shuffle=False) if world > 1 else None
    replicas = Replicas.from_environment(torch.device("cpu"))
    return evaluate(net, guide, DataLoader(ds, batch_size=5, sampler=sampler), replicas=replicas)


def save(out: Path, case: str, net, guide, result, seen) -> None:
    rank = int(os.environ.get("RANK", "0"))
    torch.save(
        {
            "sharded_val": sharded_validation(net, guide),
            "net": net.state_dict(),
            "guide": guide.state_dict(),
            "seen": seen.ids if seen is not None else [],
            "history": [{k: v for k, v in h.items() if k != "seconds"} for h in result.history],
            "elbo": result.elbo,
            "removed": {k: v.tolist() for k, v in result.removed.items()},
        },
        out / f"{case}-rank{rank}.pt",
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save(out, "halo", *halo_tensors(out))
    save(out, "gates", *gates_loader(out))
    save(out, "jackpot", *jackpot_search(out))
    save(out, "hypersparse", *hypersparse_sharded_val(out))
    # killed mid-epoch 2 (step 11; the last checkpoint is at step 9), then resumed
    ck = out / "ck"
    kill_at(11)
    try:
        halo_tensors(out, checkpoint=ck, checkpoint_every=3)
        raise AssertionError("the fit was not killed")
    except Killed:
        pass
    net, guide, result, _ = halo_tensors(out, checkpoint=ck, checkpoint_every=3, resume=True)
    save(out, "resumed", net, guide, result, None)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
