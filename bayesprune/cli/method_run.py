"""The dense stages of a run: ``[pretrain]`` and the ``[method]`` baselines.

Both train through :func:`bayesprune.methods.train` (the one fit loop, flat
:class:`~bayesprune.priors.Dense` prior). A ``[method]`` run

1. trains the network densely with the ``[fit]`` options (validated every epoch);
2. prunes it: :func:`~bayesprune.methods.magnitude_keep` then
   :func:`~bayesprune.methods.apply_masks`, or :func:`~bayesprune.methods.l1_prune`
   (``steps`` rounds);
3. fine-tunes it ``finetune_epochs`` with the pruned entries held at 0 (after every round
   for ``l1_structured``).

``bayesprune fit`` then saves the dense network (``RUN/dense``) and, in
``checkpoints/last.pt`` (format :data:`METHOD_FORMAT`, tensors only), the pruned and
fine-tuned network as the state of ``sparsify(network, Dense())`` together with the
keep-sets; ``bayesprune extract`` reads both back and hands them to
:func:`bayesprune.extract` -- the same surgery, export and metrics as a Bayesian run.

>>> import torch
>>> from bayesprune.pruning import KeepSet
>>> keep = {"fc1": KeepSet(units=torch.tensor([0, 2]), n_units=4),
...         "fc2": KeepSet(weight_mask=torch.tensor([[True, False]]))}
>>> back = decode_keep(encode_keep(keep), "last.pt")
>>> back["fc1"].units.tolist(), back["fc1"].n_units, back["fc2"].weight_mask.tolist()
([0, 2], 4, [[True, False]])
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from bayesprune.cli.method_spec import method_layers, method_options
from bayesprune.cli.pretrained import save_weights
from bayesprune.cli.run_dir import RunDir
from bayesprune.cli.spec import Spec
from bayesprune.data import Dataset
from bayesprune.errors import CheckpointError
from bayesprune.inference import save_checkpoint
from bayesprune.methods import accuracy, apply_masks, l1_prune, magnitude_keep, train
from bayesprune.pruning.keepset import KeepSet

#: the ``format`` of a method run's checkpoint (not a resumable fit checkpoint)
METHOD_FORMAT = "bayesprune-method-run-1"


def train_options(fit: Mapping[str, Any]) -> dict[str, Any]:
    """The ``[fit]`` options :func:`bayesprune.methods.train` takes."""
    keys = ("batch_size", "lr", "seed", "device", "optimizer", "weight_decay", "schedule")
    return {k: fit[k] for k in keys} | {"loss": fit["loss"], "log_every": fit["log_every"]}


class Stage:
    """A fit callback copying every epoch's record into ``records``, tagged with the stage
    (and, from the second fit it sees on, the round of iterative pruning)."""

    def __init__(self, records: list[dict[str, Any]], name: str) -> None:
        self.records, self.name, self.round = records, name, 0

    def on_fit_start(self, state: Any) -> None:
        self.round += 1

    def on_epoch_end(self, state: Any) -> bool:
        self.records.append({**state.history[-1], "stage": self.name, "round": self.round})
        return False


def pretrain(
    network: nn.Module,
    data: Any,
    *,
    val: Any,
    section: Mapping[str, Any],
    fit: Mapping[str, Any],
    progress: bool,
) -> list[dict[str, Any]]:
    """Train ``network`` in place for ``[pretrain] epochs``; returns the epochs' records."""
    opts = train_options(fit) | {"schedule": None}
    for key in ("lr", "batch_size"):
        if section.get(key) is not None:
            opts[key] = section[key]
    records: list[dict[str, Any]] = []
    train(
        network,
        data,
        epochs=section["epochs"],
        val=val,
        validate=val is not None,
        callbacks=[Stage(records, "pretrain")],
        progress=progress,
        **opts,
    )
    return records


@dataclass
class MethodResult:
    """What a ``[method]`` run produced."""

    network: nn.Module  #: pruned and fine-tuned, pruned entries exactly 0
    dense: nn.Module  #: a copy of the network after the dense training
    keep: dict[str, KeepSet]
    history: list[dict[str, Any]] = field(default_factory=list)


def fit_method(
    network: nn.Module,
    data: Any,
    *,
    val: Any,
    method: Mapping[str, Any],
    fit: Mapping[str, Any],
    layers: list[str],
    progress: bool,
) -> MethodResult:
    """Dense training, pruning and masked fine-tuning of ``network`` (in place).

    :param layers: the layers the method prunes (:func:`~bayesprune.cli.method_spec.method_layers`).
    """
    opts = method_options(method)
    base = train_options(fit)
    records: list[dict[str, Any]] = []
    validate = val is not None
    train(
        network,
        data,
        epochs=fit["epochs"],
        val=val,
        validate=validate,
        callbacks=[Stage(records, "dense")],
        progress=progress,
        **base,
    )
    dense = copy.deepcopy(network)
    tune = base | {"lr": opts["finetune_lr"] or base["lr"]}
    tune |= {"val": val, "validate": validate, "progress": progress}
    tune["callbacks"] = [Stage(records, "finetune")]
    if method["name"] == "magnitude":
        keep = magnitude_keep(network, keep=opts["keep"], layers=layers, scope=opts["scope"])
        apply_masks(network, keep)
        if opts["finetune_epochs"]:
            train(network, data, epochs=opts["finetune_epochs"], keep=keep, **tune)
    else:
        keep = l1_prune(
            network,
            data,
            keep=opts["keep"],
            steps=opts["steps"],
            finetune_epochs=opts["finetune_epochs"],
            layers=layers,
            scope=opts["scope"],
            include_output=opts["include_output"],
            min_units=opts["min_units"],
            **tune,
        )
    return MethodResult(network, dense, keep, records)


def encode_keep(keep: Mapping[str, KeepSet]) -> dict[str, dict[str, Any]]:
    """Keep-sets as tensors and integers (what a ``weights_only`` checkpoint may hold)."""
    out: dict[str, dict[str, Any]] = {}
    for name, ks in keep.items():
        entry: dict[str, Any] = {}
        if ks.weight_mask is not None:
            entry["weight_mask"] = ks.weight_mask.detach().cpu()
        if ks.units is not None:
            entry["units"], entry["n_units"] = ks.units.detach().cpu(), ks.n_units
        out[name] = entry
    return out


def decode_keep(raw: Any, path: Any) -> dict[str, KeepSet]:
    """The keep-sets :func:`encode_keep` wrote.

    :raises CheckpointError: naming ``path`` when they are missing or malformed.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"{path}: a method run's checkpoint holds no keep-sets")
    try:
        return {
            name: KeepSet(
                weight_mask=entry.get("weight_mask"),
                units=entry.get("units"),
                n_units=entry.get("n_units"),
            )
            for name, entry in raw.items()
        }
    except (AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: malformed keep-sets in a method run's checkpoint: {e}"
        ) from None


def method_checkpoint(
    net_state: Mapping[str, torch.Tensor], method: str, keep: Mapping[str, KeepSet]
) -> dict[str, Any]:
    """The checkpoint of a ``[method]`` run: the state of ``sparsify(network, Dense())``
    (a MAP guide over no sites: an empty guide state), no removed units, the keep-sets."""
    return {
        "format": METHOD_FORMAT,
        "method": method,
        "net": {k: v.detach().cpu() for k, v in net_state.items()},
        "guide": {},
        "removed": {},
        "keep": encode_keep(keep),
    }


def run_method(
    spec: Spec, run: RunDir, data: Dataset, train_data: Any, *, progress: bool, main_process: bool
) -> int:
    """``bayesprune fit`` of a ``[method]`` spec: :func:`fit_method`, then (process 0 only)
    the run folder: ``spec.json`` first, then ``dense/``, ``history.json``, ``metrics.json``
    and last ``checkpoints/last.pt`` (a run folder with a checkpoint is a finished run)."""
    network = spec.build_network()
    layers = method_layers(spec.method, network, spec.source)
    if main_process:
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_json(run.spec, spec.to_dict())
    t0 = time.perf_counter()
    result = fit_method(
        network,
        train_data,
        val=data.val,
        method=spec.method,
        fit=spec.fit,
        layers=layers,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    if not main_process:
        return 0
    name = spec.method["name"]
    save_weights(result.dense, run.dense, {"network": spec.network_config(), "stage": "dense"})
    run.write_json(run.history, result.history)
    dense = [h for h in result.history if h["stage"] == "dense"]
    summary: dict[str, Any] = {
        "method": name,
        "epochs": len(result.history),
        "dense_epochs": len(dense),
        "finetune_epochs": len(result.history) - len(dense),
        "seconds": seconds,
        "final": result.history[-1] if result.history else {},
        "layers": layers,
    }
    if data.val is not None:
        summary["val_accuracy_dense"] = accuracy(result.dense, data.val.x, data.val.y)
        summary["val_accuracy_pruned"] = accuracy(result.network, data.val.x, data.val.y)
    run.update_metrics("fit", summary)
    net = spec.build_net(result.network)
    save_checkpoint(method_checkpoint(net.state_dict(), name, result.keep), run.checkpoints)
    print(
        f"fit done ({name}): {summary['dense_epochs']} dense + {summary['finetune_epochs']} "
        f"fine-tune epochs in {seconds:.1f}s",
        end="",
    )
    if "val_accuracy_pruned" in summary:
        print(
            f", validation accuracy {100 * summary['val_accuracy_dense']:.2f}% dense -> "
            f"{100 * summary['val_accuracy_pruned']:.2f}% pruned",
            end="",
        )
    print(f"\nrun folder: {run.root}")
    return 0
