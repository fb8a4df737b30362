"""The fit's trace as xarray variables for the ``sample_stats`` group.

From a :class:`~bayesprune.inference.FitResult`:

- ``elbo`` on ``("step",)`` (coordinate: the global step): the per-example negative
  ELBO (the negative log joint for a MAP guide) of every logged window;
- ``loss_epoch`` on ``("epoch",)`` (coordinate: 1, 2, ...): each epoch's mean;
- ``lr`` on ``("epoch", "role")`` when the history records the learning rate per
  parameter role (``history[i]["lr"]``, as :func:`bayesprune.fit` does), or on
  ``("epoch",)`` for one number per epoch;
- ``val_accuracy`` on ``("epoch",)`` when the fit validated;
- ``units_alive`` on ``("epoch", "layer")`` when the history counts units alive per layer.

These are not draws, so they carry no ``chain``/``draw`` dimensions.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.guides import MAP
>>> from bayesprune.inference import FitResult
>>> from bayesprune.priors import HALO
>>> net = sparsify(nn.Linear(3, 2), HALO(), layers=nn.Linear)
>>> result = FitResult(net, MAP(net), elbo=[2.0, 1.5], elbo_steps=[50, 100],
...                    history=[{"epoch": 1, "loss": 1.7, "seconds": 0.1}])
>>> sorted(fit_trace(result))
['elbo', 'loss_epoch']
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr


def _epochs(history: list[dict[str, Any]]) -> np.ndarray:
    return np.asarray([int(h.get("epoch", i + 1)) for i, h in enumerate(history)])


def _per_epoch(history: list[dict[str, Any]], key: str) -> np.ndarray | None:
    if not history or not all(key in h for h in history):
        return None
    return np.asarray([float(h[key]) for h in history], dtype=np.float64)


def _learning_rates(history: list[dict[str, Any]], epochs: dict[str, Any]) -> xr.DataArray | None:
    """``lr`` per epoch and role (dicts in the history) or per epoch (numbers)."""
    if history and all(isinstance(h.get("lr"), dict) for h in history):
        roles = list(history[-1]["lr"])
        table = [[float(h["lr"].get(r, np.nan)) for r in roles] for h in history]
        return xr.DataArray(
            np.asarray(table, dtype=np.float64),
            dims=("epoch", "role"),
            coords={**epochs, "role": np.asarray(roles, dtype=str)},
        )
    values = _per_epoch(history, "lr")
    return None if values is None else xr.DataArray(values, dims=("epoch",), coords=epochs)


def fit_trace(result: Any) -> dict[str, xr.DataArray]:
    """``sample_stats`` variables from a ``FitResult`` (empty for ``None``)."""
    if result is None:
        return {}
    out: dict[str, xr.DataArray] = {}
    if result.elbo:
        out["elbo"] = xr.DataArray(
            np.asarray(result.elbo, dtype=np.float64),
            dims=("step",),
            coords={"step": np.asarray(result.elbo_steps, dtype=np.int64)},
        )
    history = list(result.history)
    epochs = {"epoch": _epochs(history)}
    for name, key in (("loss_epoch", "loss"), ("val_accuracy", "val_accuracy")):
        values = _per_epoch(history, key)
        if values is not None:
            out[name] = xr.DataArray(values, dims=("epoch",), coords=epochs)
    lr = _learning_rates(history, epochs)
    if lr is not None:
        out["lr"] = lr
    if history and all(isinstance(h.get("units"), dict) for h in history):
        layers = list(history[-1]["units"])
        table = np.asarray(
            [[int(h["units"].get(n, -1)) for n in layers] for h in history], dtype=np.int64
        )
        out["units_alive"] = xr.DataArray(
            table,
            dims=("epoch", "layer"),
            coords={**epochs, "layer": np.asarray(layers, dtype=str)},
        )
    return out
