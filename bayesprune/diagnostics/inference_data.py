"""``diagnose``: a fitted posterior as an ArviZ ``InferenceData``.

The draws come from the variational guide ``q`` (one chain), not from MCMC. The layout
(groups, variable and dimension names, attrs) is the contract in
``/work/brief/idata_schema.md``, summarised here:

- ``posterior``: per layer ``L`` (the user's module names) ``"L.gate"``, ``"L.gate_prob"``
  (θ = q(z = 1)), ``"L.weight_scale"``, ``"L.weight_norm"`` and, with ``weights=True``,
  ``"L.weight"`` (see :mod:`bayesprune.diagnostics.posterior`); unit coordinates are the
  *original* unit indices, also after units were removed during the fit;
- ``posterior_predictive`` / ``observed_data`` / ``log_likelihood``: ``"obs"`` over
  ``obs_id`` -- predictive draws, the targets, and ``log p(y_i | z_s)``;
- ``sample_stats``: ``log_weight`` (the importance log weights behind PSIS k̂) and the
  fit's trace when ``result`` is given (:mod:`bayesprune.diagnostics.fit_trace`);
- ``inclusion``: ``"L.p_keep"``, :func:`bayesprune.pruning.inclusion.inclusion_probs`;
- ``pruning``: accuracy of the collapsed network over a sweep of keep fractions
  (:mod:`bayesprune.diagnostics.pruning_sweep`), classification only;
- ``calibration``: 15 reliability bins of the model-averaged predictive probabilities
  (:mod:`bayesprune.diagnostics.calibration`), classification only;
- ``posterior.attrs``: accuracy / NLL / ECE of the model average over the draws
  (``*_predictive``) and of ``guide.point()`` (``*_point``), PSIS k̂ with its meaning and
  scope, and where everything came from (guide, prior as JSON, split, draws).

The global torch RNG is left as it was: draws use a forked RNG seeded with ``seed``.

>>> import torch.nn as nn
>>> from collections import OrderedDict
>>> from bayesprune import sparsify
>>> from bayesprune.data import synthetic_classification
>>> from bayesprune.guides import MAP
>>> from bayesprune.priors import UnitGates
>>> data = synthetic_classification(32, 0, 16, input_shape=(4,), n_classes=2)
>>> mlp = nn.Sequential(OrderedDict(hidden=nn.Linear(4, 6), act=nn.ReLU(), out=nn.Linear(6, 2)))
>>> net = sparsify(mlp, UnitGates())
>>> idata = diagnose(net, MAP(net), data, num_samples=5, pruning_points=3)
>>> idata.posterior["hidden.gate"].dims, idata.posterior.attrs["split"]
(('chain', 'draw', 'hidden_unit'), 'test')
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from bayesprune.diagnostics._arviz import az
from bayesprune.diagnostics.calibration import (
    DEFAULT_BINS,
    expected_calibration_error,
    reliability_bins,
)
from bayesprune.diagnostics.draws import Draws, run_draws
from bayesprune.diagnostics.fit_trace import fit_trace
from bayesprune.diagnostics.inputs import WHO, check_int, resolve_data
from bayesprune.diagnostics.log_density import random_sites
from bayesprune.diagnostics.names import unit_dim, weight_dims
from bayesprune.diagnostics.posterior import coords as posterior_coords
from bayesprune.diagnostics.posterior import variable_dims
from bayesprune.diagnostics.pruning_sweep import pruning_sweep
from bayesprune.diagnostics.psis import KHAT_MEANING, pareto_khat
from bayesprune.errors import ConfigError, DataError, UnsupportedError
from bayesprune.guides.base import Guide, check_pair
from bayesprune.inference.result import FitResult
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.likelihoods import Categorical
from bayesprune.pruning.inclusion import inclusion_kind, inclusion_probs
from bayesprune.sites import join

log = logging.getLogger(__name__)

__all__ = ["diagnose"]


def _weight_uncertainty(guide: Guide) -> str:
    weights = [s for s in guide.sites if s.role == "weight"]
    if not weights:
        return "none (the prior has no weight sites: weights are deterministic parameters)"
    with torch.no_grad():
        kinds = {type(_base(guide.site_distribution(s))).__name__ for s in weights}
    if kinds == {"Delta"}:
        family = "MAP" if guide.name == "map" else guide.name
        return f"none ({family} guide: Delta over weights)"
    if kinds == {"Normal"} and guide.name == "mean_field":
        return "mean-field Normal"
    return f"{guide.name}: {', '.join(sorted(kinds))} over weights"


def _base(d: Any) -> Any:
    while hasattr(d, "base_dist"):
        d = d.base_dist
    return d


def _psis(guide: Guide, log_weight: Tensor, n: int) -> dict[str, Any]:
    rnd = random_sites(guide)
    scope = (
        f"log w = log p(y, z) - log q(z) with y the {n} diagnosed examples and the prior's "
        "per-example hyper-parameters scaled to that n: k-hat refers to the posterior given "
        "the diagnosed data, not the training posterior"
    )
    fixed = sorted({s.role for s in guide.sites if s not in rnd})
    if fixed:
        scope += f"; sites where q is a Delta (roles {', '.join(fixed)}) are held at their values"
    if not rnd:
        return {
            "psis_khat": float("nan"),
            "psis_khat_note": "undefined: q is a Delta over every site (MAP), it has no spread "
            "to act as an importance proposal",
            "psis_khat_scope": scope,
        }
    k, note = pareto_khat(log_weight)
    return {"psis_khat": k, "psis_khat_note": note, "psis_khat_scope": scope}


def _chain(values: Tensor) -> np.ndarray:
    return values.unsqueeze(0).numpy()


def _posterior(net: BayesianNet, draws: Draws, num_samples: int, weights: bool) -> xr.Dataset:
    dims = variable_dims(net, weights=weights)
    coords: dict[str, Any] = {"chain": [0], "draw": np.arange(num_samples)}
    coords.update({k: v.numpy() for k, v in posterior_coords(net, weights=weights).items()})
    data = {
        name: (("chain", "draw", *d), _chain(draws.posterior[name])) for name, d in dims.items()
    }
    return xr.Dataset(data, coords=coords)


def _predictive(draws: Draws, y: Tensor) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset]:
    s, n = draws.log_lik.shape
    coords = {"chain": [0], "draw": np.arange(s), "obs_id": np.arange(n)}
    dims = ("chain", "draw", "obs_id")
    pp = xr.Dataset({"obs": (dims, _chain(draws.obs))}, coords=coords)
    ll = xr.Dataset({"obs": (dims, _chain(draws.log_lik))}, coords=coords)
    obs = xr.Dataset({"obs": (("obs_id",), y.cpu().numpy())}, coords={"obs_id": np.arange(n)})
    return pp, ll, obs


def _inclusion(net: BayesianNet, guide: Guide) -> tuple[xr.Dataset | None, str]:
    try:
        kind = inclusion_kind(net, guide)
        probs = inclusion_probs(net, guide)
    except TypeError as e:
        log.info("no inclusion probabilities: %s", e)
        return None, f"none: {e}"
    coords = posterior_coords(net, weights=True)
    data: dict[str, Any] = {}
    used: dict[str, Any] = {}
    for layer, p in probs.items():
        if p.dim() == 1:
            d: tuple[str, ...] = (unit_dim(layer),)
        else:
            d = weight_dims(layer, p.dim())
        data[join(layer, "p_keep")] = (d, p.detach().cpu().numpy())
        for name, size in zip(d, p.shape, strict=True):
            c = coords.get(name)
            used[name] = c.numpy() if c is not None and c.numel() == size else np.arange(size)
    return xr.Dataset(data, coords=used), kind


def _classification(
    draws: Draws, point_out: Tensor, y: Tensor
) -> tuple[dict[str, float], xr.Dataset]:
    probs = draws.probs
    point_probs = point_out.double().softmax(-1).cpu()
    yc = y.cpu()
    attrs = {
        "accuracy_predictive": float((probs.argmax(-1) == yc).double().mean()),
        "accuracy_point": float((point_probs.argmax(-1) == yc).double().mean()),
        "ece_predictive": expected_calibration_error(probs, yc, DEFAULT_BINS),
        "ece_point": expected_calibration_error(point_probs, yc, DEFAULT_BINS),
    }
    bins = reliability_bins(probs, yc, DEFAULT_BINS)
    cal = xr.Dataset(
        {k: (("bin",), v.numpy()) for k, v in bins.items()},
        coords={"bin": np.arange(DEFAULT_BINS)},
    )
    return attrs, cal


def _pruning(sweep: dict[str, Any]) -> xr.Dataset:
    n = len(sweep["keep"])
    names = ("keep", "kept_fraction", "accuracy", "accuracy_predicted")
    data = {
        k: (("threshold",), np.asarray(sweep[k], dtype=np.float64)) for k in names if k in sweep
    }
    attrs = {
        "default_kept_fraction": float(sweep["default_kept_fraction"]),
        "default_accuracy": float(sweep["default_accuracy"]),
        "sweep": "keep fractions geometrically spaced from a quarter of what the default "
        "collapse keeps to 1; accuracy of the collapsed network (masked_copy) at each",
    }
    return xr.Dataset(data, coords={"threshold": np.arange(n)}, attrs=attrs)


def diagnose(
    net: BayesianNet,
    guide: Guide,
    data: Any,
    *,
    num_samples: int = 100,
    weights: bool = False,
    result: FitResult | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    max_examples: int | None = None,
    pruning_points: int = 12,
    predict_samples: int = 0,
) -> Any:
    """Draw from the fitted guide, run the network on ``data`` and collect everything into an
    ``arviz.InferenceData`` (see the module docstring for the layout).

    :param net: the fitted model (from :func:`bayesprune.sparsify`).
    :param guide: its fitted guide; the draws come from it.
    :param data: an ``(x, y)`` pair of tensors, a :class:`~bayesprune.data.Split`, a
        :class:`~bayesprune.data.Dataset` (its test split if it has one, else val, else
        train; ``attrs["split"]`` says which) or a ``DataLoader`` of ``(x, y)`` batches
        (gathered in memory, in the loader's order, up to ``max_examples``).
    :param num_samples: draws from the guide (``>= 1``).
    :param weights: also store every weight draw (``"L.weight"``; large).
    :param result: the :class:`~bayesprune.inference.FitResult`, for the fit's trace in
        ``sample_stats``.
    :param seed: seeds the draws (in a forked RNG: the global torch RNG is untouched).
    :param batch_size: examples per forward pass.
    :param max_examples: use only the first this many examples of the split.
    :param pruning_points: points of the accuracy-vs-sparsity sweep (0: no ``pruning`` group).
    :param predict_samples: draws per sweep point for ``accuracy_predicted`` (the Monte-Carlo
        forecast of :func:`bayesprune.pruning.predict.predict_pruning`); 0 leaves it out.
    :returns: ``arviz.InferenceData``.
    :raises TypeError: for a ``net``, ``guide``, ``data`` or ``result`` of the wrong type.
    :raises ValueError: for ``y`` not matching ``x`` or the likelihood, a guide of another
        net, or an invalid ``num_samples``, ``seed``, ``batch_size``, ``max_examples``,
        ``pruning_points`` or ``predict_samples``.
    """
    check_pair(WHO, net, guide)
    check_int("num_samples", num_samples, 1)
    check_int("batch_size", batch_size, 1)
    check_int("max_examples", max_examples, 1, optional=True)
    check_int("pruning_points", pruning_points, 0)
    check_int("predict_samples", predict_samples, 0)
    if predict_samples == 1:
        raise ConfigError(f"{WHO}: predict_samples must be 0 or >= 2 (for a standard error), got 1")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{WHO}: seed must be an integer, got {seed!r}")
    if not isinstance(weights, bool):
        raise UnsupportedError(f"{WHO}: weights must be True or False, got {weights!r}")
    if result is not None and not isinstance(result, FitResult):
        raise UnsupportedError(
            f"{WHO}: result must be a FitResult or None, got {type(result).__name__}"
        )
    x, y, split = resolve_data(data, max_examples)
    if max_examples is not None:
        x, y = x[:max_examples], y[:max_examples]
    device = net.device
    x, y = x.to(device), y.to(device)

    point_out = net.predict(guide.point(), x, batch_size=batch_size)
    try:
        net.likelihood.check_targets(y, point_out.shape[-1] if point_out.dim() > 1 else None)
    except ValueError as e:
        raise DataError(f"{WHO}: y does not fit the network: {e}") from None
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        draws = run_draws(net, guide, x, y, num_samples, batch_size=batch_size, weights=weights)

    n = int(x.shape[0])
    import bayesprune

    attrs: dict[str, Any] = {
        "inference_library": "pyro",
        "bayesprune_version": bayesprune.__version__,
        "method": "variational",
        "draws_from": "q (the variational guide), not MCMC",
        "guide": guide.name,
        "prior": json.dumps(net.prior.config(), sort_keys=True),
        "likelihood": net.likelihood.name,
        "split": split,
        "n_examples": n,
        "num_samples": int(num_samples),
        "seed": int(seed),
        "forward_passes": int(draws.runs),
        "weight_uncertainty": _weight_uncertainty(guide),
        "gate_prob_means": "theta = q(z = 1) of each gate (the guide's), not the prior's pi",
        "nll_predictive": float(
            -(torch.logsumexp(draws.log_lik.double(), 0) - math.log(num_samples)).mean()
        ),
        "nll_point": float(-net.likelihood.distribution(point_out).log_prob(y).double().mean()),
        "psis_khat_meaning": KHAT_MEANING,
        **_psis(guide, draws.log_weight, n),
    }
    groups: dict[str, xr.Dataset] = {}
    posterior = _posterior(net, draws, num_samples, weights)
    pp, ll, obs = _predictive(draws, y)
    stats = fit_trace(result)
    stats["log_weight"] = xr.DataArray(
        _chain(draws.log_weight),
        dims=("chain", "draw"),
        coords={"chain": [0], "draw": np.arange(num_samples)},
    )
    groups.update(
        posterior_predictive=pp,
        log_likelihood=ll,
        observed_data=obs,
        sample_stats=xr.Dataset(stats),
    )
    inclusion, kind = _inclusion(net, guide)
    attrs["inclusion_kind"] = kind
    if inclusion is not None:
        groups["inclusion"] = inclusion
    if isinstance(net.likelihood, Categorical):
        metrics, calibration = _classification(draws, point_out, y)
        attrs.update(metrics)
        groups["calibration"] = calibration
        if pruning_points > 0:
            sweep = pruning_sweep(
                net,
                guide,
                x,
                y,
                n_points=pruning_points,
                batch_size=batch_size,
                predict_samples=predict_samples,
                seed=seed,
            )
            groups["pruning"] = _pruning(sweep)
    posterior.attrs.update(attrs)
    return az.InferenceData(posterior=posterior, **groups)
