"""``predict_pruning``: what pruning will cost, estimated before extraction.

For ``num_samples`` draws ``w_s`` from the guide (weights and gates), the network is
run on a held-out split twice with the same draw: as drawn (the *full* posterior
predictive) and with the elements the keep-sets remove forced off (the *pruned*
posterior predictive). Forcing off is done the way :func:`bayesprune.extract` removes
them: the deterministic parameters come from :func:`~bayesprune.pruning.masked_copy`
(a dropped unit's bias and coupled BatchNorm channel zeroed, a removed block's branch
zeroed), every drawn weight that the masked copy zeroes is zeroed (unstructured masks,
rows of dropped units, coupled layers), and the gates of dropped units and removed
blocks are set to 0. Kept elements keep their drawn values, so the pruned predictive is
the posterior with the removed elements switched off.

Reported (:class:`PruningForecast`):

- ``accuracy_full`` / ``accuracy_pruned``: the mean over draws of each draw's accuracy;
  ``accuracy_change`` their paired difference (pruned − full) and
  ``accuracy_change_se`` its Monte-Carlo standard error (sd of the per-draw differences
  over ``√num_samples``);
- ``accuracy_full_predictive`` / ``accuracy_pruned_predictive`` and ``nll_full`` /
  ``nll_pruned``: accuracy and mean negative log-likelihood of the model average
  (class probabilities averaged over the draws);
- ``accuracy_point`` / ``nll_point``: the *collapsed network* -- what
  :func:`bayesprune.extract` builds from the same keep-sets: the guide's point estimate
  (``KeepSet.values`` where given) with the removed elements off and every kept gate
  on (the extracted network has no gates; a kept unit whose θ ≤ 0.5 is on here although
  ``guide.point()`` would gate it off).

Draws come from the global torch RNG inside ``torch.random.fork_rng`` seeded with
``seed``: the caller's random state is untouched and the result is reproducible.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.data import synthetic_classification
>>> from bayesprune.guides import MeanField
>>> from bayesprune.priors import UnitGates
>>> from bayesprune.pruning import collapse
>>> data = synthetic_classification(32, 32, 0, input_shape=(4,), n_classes=2, seed=0)
>>> net = sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), UnitGates())
>>> guide = MeanField(net)
>>> keep = collapse(net, guide)  # θ = 0.9 everywhere: every unit kept
>>> f = predict_pruning(net, guide, keep, data, num_samples=4)
>>> f.split, f.accuracy_change, f.accuracy_change_se
('val', 0.0, 0.0)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bayesprune.data import Dataset, Split
from bayesprune.errors import ConfigError, DataError, UnsupportedError
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.likelihoods import Categorical
from bayesprune.pruning.extract import masked_copy
from bayesprune.pruning.keepset import KeepSet


@dataclass(frozen=True)
class PruningForecast:
    """Monte-Carlo forecast of the effect of a pruning; see the module docstring."""

    accuracy_full: float
    accuracy_pruned: float
    accuracy_change: float
    accuracy_change_se: float
    accuracy_full_predictive: float
    accuracy_pruned_predictive: float
    nll_full: float
    nll_pruned: float
    nll_change: float
    accuracy_point: float
    nll_point: float
    num_samples: int
    n_examples: int
    split: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def forecast_split(data: Any) -> tuple[Tensor, Tensor, str]:
    """The ``(x, y, split name)`` :func:`predict_pruning` scores on: a Dataset's val split
    (else test), or the given pair / Split (``"given"``)."""
    if isinstance(data, Dataset):
        for name in ("val", "test"):
            part = getattr(data, name)
            if part is not None and len(part) > 0:
                return part.x, part.y, name
        raise DataError("predict_pruning: data (a Dataset) has neither a val nor a test split")
    if isinstance(data, Split):
        return data.x, data.y, "given"
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ConfigError(
                f"predict_pruning: data has {x.shape[0]} inputs but {y.shape[0]} targets"
            )
        return x, y, "given"
    raise UnsupportedError(
        "predict_pruning: data must be an (x, y) pair of tensors, a bayesprune.data.Split or "
        f"a Dataset, got {type(data).__name__}"
    )


def _check(net: Any, guide: Any, keep: Any, num_samples: Any, seed: Any, batch_size: Any) -> None:
    if not isinstance(net, BayesianNet):
        raise UnsupportedError(
            f"predict_pruning: net must be a BayesianNet, got {type(net).__name__}"
        )
    if not isinstance(guide, Guide):
        raise UnsupportedError(
            f"predict_pruning: guide must be a Guide, got {type(guide).__name__}"
        )
    if not isinstance(net.likelihood, Categorical):
        raise ConfigError(
            "predict_pruning: accuracy needs a classification network (Categorical "
            f"likelihood), got {type(net.likelihood).__name__}"
        )
    if not isinstance(keep, dict) or not all(isinstance(k, KeepSet) for k in keep.values()):
        raise UnsupportedError("predict_pruning: keep must be a dict {layer name: KeepSet}")
    for name, value, low in (("num_samples", num_samples, 2), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ConfigError(f"predict_pruning: {name} must be an integer >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"predict_pruning: seed must be an integer, got {seed!r}")


def _with_module(net: BayesianNet, module: nn.Module) -> BayesianNet:
    """A shallow view of ``net`` that runs ``module`` in place of ``net.module`` (same sites,
    prior and gate targets); ``net`` itself is not touched."""
    view = copy.copy(net)
    view.__dict__["_modules"] = {**net._modules, "module": module}
    return view


@torch.no_grad()
def _draw_masks(
    net: BayesianNet, keep: dict[str, KeepSet], example_input: Any
) -> dict[str, Tensor]:
    """Per site, which drawn values survive the pruning (bool, site-shaped).

    Replaced weights: the entries :func:`masked_copy` leaves nonzero in a copy whose
    replaced weights are all 1 (so coupled layers are masked exactly as extraction does).
    Gates: 1 for kept units / blocks, 0 for dropped ones."""
    ones = copy.deepcopy(net.module)
    for s in net.replacing:
        ones.get_parameter(s.replaces).fill_(1.0)
    bare = {n: dataclasses.replace(k, values={}) for n, k in keep.items()}
    masked = masked_copy(ones, bare, example_input=example_input)
    masks = {s.name: masked.get_parameter(s.replaces) != 0 for s in net.replacing}
    for s in net.gates:
        ks = keep.get(s.layer)
        m = torch.ones(s.shape, dtype=torch.bool)
        if ks is not None and ks.identity:
            m.zero_()
        elif ks is not None and ks.units is not None:
            # a gate tied across groups (site shape (period,)) is kept with its units
            period = s.shape[0]
            m.zero_()
            m[ks.units % period] = True
            if ks.zeroed is not None:  # kept in shape, gate closed
                m[ks.zeroed % period] = False
        masks[s.name] = m.to(net.device)
    return masks


def _point_keep(net: BayesianNet, guide: Guide, keep: dict[str, KeepSet]) -> dict[str, KeepSet]:
    """``keep`` with the guide's point estimate of every replaced weight as its values
    (the keep-set's own values win), for every layer carrying the prior."""
    point = guide.point()
    out = dict(keep)
    for layer, sites in net.layer_sites.items():
        prefix = f"{layer}." if layer else ""
        values = {
            s.replaces.removeprefix(prefix): point[s.name].detach()
            for s in sites
            if s.replaces is not None
        }
        ks = keep.get(layer, KeepSet())
        out[layer] = dataclasses.replace(ks, values={**values, **ks.values})
    return out


class _Scores:
    """Accumulates one set of per-draw outputs: accuracies and the model average."""

    def __init__(self, y: Tensor) -> None:
        self.y = y
        self.acc: list[float] = []
        self.prob_sum: Tensor | None = None
        self.log_lik: Tensor | None = None  # logsumexp over draws of log p(y_i | w_s)

    def add(self, logits: Tensor) -> None:
        logp = F.log_softmax(logits.double(), dim=-1)
        self.acc.append(float((logp.argmax(-1) == self.y).double().mean()))
        ll = logp.gather(-1, self.y[:, None]).squeeze(-1)
        probs = logp.exp()
        if self.prob_sum is None:
            self.prob_sum, self.log_lik = probs, ll
        else:
            self.prob_sum = self.prob_sum + probs
            self.log_lik = torch.logaddexp(self.log_lik, ll)

    def predictive(self) -> tuple[float, float]:
        """Accuracy and NLL of the model average over the draws."""
        acc = float((self.prob_sum.argmax(-1) == self.y).double().mean())
        nll = float(-(self.log_lik - math.log(len(self.acc))).mean())
        return acc, nll


@torch.inference_mode()
def _plain_outputs(module: nn.Module, x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    module.eval()
    return torch.cat(
        [module(x[i : i + batch_size].to(device)) for i in range(0, x.shape[0], batch_size)]
    )


def predict_pruning(
    net: BayesianNet,
    guide: Guide,
    keep: dict[str, KeepSet],
    data: Any,
    *,
    num_samples: int = 32,
    seed: int = 0,
    batch_size: int = 1024,
    example_input: Tensor | None = None,
) -> PruningForecast:
    """Forecast by Monte Carlo over the posterior how much ``keep`` changes accuracy and NLL.

    :param net: the fitted model.
    :param guide: its fitted guide (draws come from it; see the module docstring).
    :param keep: ``{layer name: KeepSet}``, e.g. from :func:`bayesprune.collapse`.
    :param data: an ``(x, y)`` pair, a :class:`~bayesprune.data.Split`, or a
        :class:`~bayesprune.data.Dataset` (its val split, else its test split).
    :param num_samples: draws from the guide, ``>= 2`` (for the standard error).
    :param seed: seeds the draws (inside ``fork_rng``: the global RNG is untouched).
    :param batch_size: examples per forward pass.
    :param example_input: traces the network for structured keep-sets (default: the one
        the net recorded when fitted, else the first example of ``data``).
    :returns: a :class:`PruningForecast`.
    :raises ValueError: for invalid ``num_samples``, ``seed``, ``batch_size`` or data, or a
        network that is not a classifier.
    :raises TypeError: for a ``data``, ``keep``, ``net`` or ``guide`` of the wrong type.
    """
    _check(net, guide, keep, num_samples, seed, batch_size)
    x, y, split = forecast_split(data)
    if x.shape[0] == 0:
        raise DataError("predict_pruning: data has no examples")
    device = net.device
    y = y.to(device).long()
    if example_input is None:
        example_input = net.example_input if net.example_input is not None else x[:1]
    if isinstance(example_input, Tensor):
        example_input = example_input.to(device)

    masks = _draw_masks(net, keep, example_input)
    pruned_net = _with_module(net, masked_copy(net, keep, example_input=example_input))
    point_module = masked_copy(net, _point_keep(net, guide, keep), example_input=example_input)
    point_logp = F.log_softmax(_plain_outputs(point_module, x, batch_size, device).double(), -1)

    full, pruned = _Scores(y), _Scores(y)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        for _ in range(int(num_samples)):
            draw = {k: v[0] for k, v in guide.sample(1).items()}
            cut = {k: v * masks[k].to(v.dtype) if k in masks else v for k, v in draw.items()}
            full.add(_outputs(net, draw, x, batch_size, device))
            pruned.add(_outputs(pruned_net, cut, x, batch_size, device))

    diffs = torch.tensor(pruned.acc, dtype=torch.float64) - torch.tensor(
        full.acc, dtype=torch.float64
    )
    acc_full_pred, nll_full = full.predictive()
    acc_pruned_pred, nll_pruned = pruned.predictive()
    return PruningForecast(
        accuracy_full=sum(full.acc) / len(full.acc),
        accuracy_pruned=sum(pruned.acc) / len(pruned.acc),
        accuracy_change=float(diffs.mean()),
        accuracy_change_se=float(diffs.std() / math.sqrt(len(diffs))),
        accuracy_full_predictive=acc_full_pred,
        accuracy_pruned_predictive=acc_pruned_pred,
        nll_full=nll_full,
        nll_pruned=nll_pruned,
        nll_change=nll_pruned - nll_full,
        accuracy_point=float((point_logp.argmax(-1) == y).double().mean()),
        nll_point=float(-point_logp.gather(-1, y[:, None]).mean()),
        num_samples=int(num_samples),
        n_examples=int(x.shape[0]),
        split=split,
    )


def _outputs(
    net: BayesianNet, values: dict[str, Tensor], x: Tensor, batch_size: int, device: torch.device
) -> Tensor:
    return torch.cat(
        [
            net.predict(values, x[i : i + batch_size].to(device), batch_size=batch_size)
            for i in range(0, x.shape[0], batch_size)
        ]
    )
