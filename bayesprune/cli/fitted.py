"""Load a fitted run back from its folder: the spec, the net and guide at their last
checkpoint (units removed during the fit replayed), the data, and the fit's trace.

Shared by ``bayesprune extract`` and ``bayesprune report``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bayesprune.cli.method_run import METHOD_FORMAT, decode_keep
from bayesprune.cli.pretrained import load_weights
from bayesprune.cli.run_dir import RunDir
from bayesprune.cli.spec import Spec
from bayesprune.data import Dataset
from bayesprune.errors import CheckpointError
from bayesprune.guides.base import Guide
from bayesprune.inference import FitResult, load_checkpoint
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.keepset import KeepSet
from bayesprune.pruning.live import removed_units, replay_removals

__all__ = ["Fitted", "load_fitted", "read_elbo", "read_spec", "starting_network"]


@dataclass
class Fitted:
    """A run folder's fitted model, ready to use (``net`` in eval mode)."""

    run: RunDir
    spec: Spec
    net: BayesianNet
    guide: Guide
    data: Dataset
    checkpoint: dict[str, Any]

    def result(self) -> FitResult:
        """The :class:`~bayesprune.FitResult` as ``fit`` returned it, rebuilt from the run
        folder's ``history.json`` and ``elbo.csv`` (empty trace if they are absent, e.g.
        for a fit killed before it finished)."""
        history = self.run.read_json(self.run.history) if self.run.history.is_file() else []
        steps, values = read_elbo(self.run.elbo) if self.run.elbo.is_file() else ([], [])
        return FitResult(
            net=self.net,
            guide=self.guide,
            elbo=values,
            elbo_steps=steps,
            history=history,
            checkpoint=self.run.checkpoint,
            removed=removed_units(self.net),
        )

    def method_keep(self) -> dict[str, KeepSet]:
        """The keep-sets a ``[method]`` run stored with its network."""
        return decode_keep(self.checkpoint.get("keep"), self.run.checkpoint)


def read_elbo(path: str | os.PathLike) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of an ``elbo.csv`` written by :meth:`RunDir.write_elbo`."""
    steps, values = [], []
    with open(path, newline="") as f:
        rows = csv.reader(f)
        next(rows, None)  # header
        for i, row in enumerate(rows, start=2):
            try:
                steps.append(int(row[0]))
                values.append(float(row[1]))
            except (IndexError, ValueError):
                raise CheckpointError(
                    f"{path}, line {i}: expected 'step,value', got {row}"
                ) from None
    return steps, values


def read_spec(run: RunDir) -> Spec:
    """The spec a run folder was fitted with (``spec.json``)."""
    return Spec.from_dict(run.read_json(run.spec), source=str(run.spec))


def starting_network(spec: Spec, run: RunDir) -> torch.nn.Module:
    """The network the run's fit started from: built from the spec, with the weights the
    fit saved in ``RUN/pretrained`` if any (``[pretrain]``, ``[network] pretrained``)."""
    if not (run.pretrained / "model.json").is_file():
        return spec.build_network()
    network = spec.build_network(pretrained=False)
    load_weights(network, run.pretrained, str(run.pretrained))
    return network


def load_fitted(root: str | os.PathLike, data_root: Path | None = None) -> Fitted:
    """Rebuild the net and guide of the run folder ``root`` from ``spec.json`` and
    ``checkpoints/last.pt`` (replaying ``fit(remove_dead=True)`` removals), and its data.

    :raises FileNotFoundError: when ``root`` is not a run folder (no ``spec.json``).
    :raises CheckpointError: when the checkpoint is missing or does not fit the spec.
    """
    run = RunDir(root)
    spec = read_spec(run)
    net = spec.build_net(starting_network(spec, run))
    guide = spec.build_guide(net)
    ck = load_checkpoint(run.checkpoint)
    if bool(spec.method) != (ck.get("format") == METHOD_FORMAT):
        kind = "a [method] run's" if spec.method else "a fit"
        raise CheckpointError(f"{run.checkpoint} is not {kind} checkpoint (spec: {run.spec})")
    try:
        replay_removals(net, guide, ck.get("removed") or {})  # fit(..., remove_dead=True)
        net.load_state_dict(ck["net"])
        guide.load_state_dict(ck["guide"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(
            f"{run.checkpoint} does not fit the spec in {run.spec}: {e}"
        ) from None
    net.eval()
    data_kw = {"root": data_root} if data_root else {}
    data = spec.build_data(**data_kw)
    net.example_input = data.train.x[:1].clone()
    return Fitted(run, spec, net, guide, data, ck)
