"""What a fit shows while it runs: the step bar, one line per epoch, and the NaN guard.

The loss is shown per training example under the name of what it is
(:func:`objective_label`): ``-elbo/n``, the negative ELBO, when the guide spreads over at
least one site (mean-field weights, Bernoulli gates); ``-log p/n``, the negative log joint
density at the guide's point, when every site of the guide is a point mass (a MAP guide
without gates, a jackpot's scores): that is no ELBO. The history key is ``loss`` either way.

>>> format_record({"epoch": 1, "loss": 0.5, "seconds": 2.0, "val_accuracy": 0.9}, epochs=3)
'epoch 1/3  -elbo/n 0.5000  2.0s  val acc 90.00%'
>>> format_record({"epoch": 1, "loss": 0.5, "seconds": 2.0}, epochs=3, label=LOG_JOINT)
'epoch 1/3  -log p/n 0.5000  2.0s'
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import torch
from tqdm.auto import tqdm

from bayesprune.errors import NonFiniteLossError
from bayesprune.guides.base import Guide

#: the loss's name when the guide spreads over some site
NEG_ELBO = "-elbo/n"
#: the loss's name when every site of the guide is a point mass (MAP without gates)
LOG_JOINT = "-log p/n"


@torch.no_grad()
def objective_label(guide: Guide) -> str:
    """:data:`LOG_JOINT` when every site of ``guide`` is a point mass (a Delta), else
    :data:`NEG_ELBO`.

    >>> import torch.nn as nn
    >>> from bayesprune import sparsify
    >>> from bayesprune.priors import HALO, UnitGates
    >>> from bayesprune.guides import MAP, MeanField
    >>> net = sparsify(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), HALO())
    >>> objective_label(MAP(net)), objective_label(MeanField(net))
    ('-log p/n', '-elbo/n')
    >>> gated = sparsify(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), UnitGates())
    >>> objective_label(MAP(gated))  # the gates are Bernoulli draws
    '-elbo/n'
    """
    for s in guide.sites:
        d = guide.site_distribution(s)
        while isinstance(d, dist.Independent):
            d = d.base_dist
        if not isinstance(d, dist.Delta):
            return NEG_ELBO
    return LOG_JOINT


def step_bar(total: int | None, initial: int, epoch: int, epochs: int, show: bool) -> tqdm:
    """The per-epoch step bar; only drawn on a terminal (logs and CI get one line per epoch)."""
    return tqdm(
        total=total,
        initial=initial,
        desc=f"epoch {epoch + 1}/{epochs}",
        disable=not show or not sys.stderr.isatty(),
        leave=False,
        dynamic_ncols=True,
    )


def postfix(loss: float, history: list[dict[str, Any]], label: str = NEG_ELBO) -> dict[str, str]:
    """The bar's live figures: the loss window (named ``label``), and the last epoch's
    validation accuracy, kept fraction and units alive."""
    out = {label: f"{loss:.4g}"}
    if history:
        last = history[-1]
        if "val_accuracy" in last:
            out["val"] = f"{100 * last['val_accuracy']:.1f}%"
        if "kept" in last:
            out["kept"] = f"{100 * last['kept']:.1f}%"
        if "units" in last:
            out["units"] = "-".join(str(v) for v in last["units"].values())
    return out


def format_record(r: dict[str, Any], epochs: int, label: str = NEG_ELBO) -> str:
    """One epoch's line; the loss is named ``label`` (:func:`objective_label`)."""
    parts = [f"epoch {r['epoch']}/{epochs}", f"{label} {r['loss']:.4f}", f"{r['seconds']:.1f}s"]
    if "val_accuracy" in r:
        parts.append(f"val acc {100 * r['val_accuracy']:.2f}%")
    if "kept" in r:
        parts.append(f"kept {100 * r['kept']:.2f}%")
    if "units" in r:
        parts.append("units " + "-".join(str(v) for v in r["units"].values()))
    return "  ".join(parts)


def guard(mean: float, epoch: int, step: int, ckpt_dir: Path | None) -> None:
    """Stop the fit with a :class:`NonFiniteLossError` when the window's mean loss is not
    finite, saying where and whether a good checkpoint is left."""
    if math.isfinite(mean):
        return
    if ckpt_dir is not None and (ckpt_dir / "last.pt").exists():
        keep = (
            f"the last good checkpoint {ckpt_dir / 'last.pt'} is intact "
            "(resume=True continues from it)"
        )
    else:
        keep = "no checkpoint was written (pass checkpoint=<folder> to keep progress)"
    raise NonFiniteLossError(
        f"fit: the loss became {mean} at epoch {epoch + 1}, step {step}; stopping. {keep}. "
        "Lower the learning rate or check the data and hyper-parameters."
    )
