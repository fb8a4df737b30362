"""Calibration of predicted class probabilities: reliability bins and the ECE.

Confidence is the largest predicted probability of an example; examples are put
into ``n_bins`` equal-width bins over ``[0, 1]`` (bin ``m`` holds confidences in
``(m/M, (m+1)/M]``, the first bin also holds 0). For each bin: the mean confidence,
the accuracy of the arg-max class and the count. The expected calibration error
(Guo et al., 2017) is the count-weighted mean gap
``ECE = Σ_m (n_m / N) · |accuracy_m − confidence_m|``.

>>> import torch
>>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
>>> y = torch.tensor([0, 1, 1])
>>> round(expected_calibration_error(probs, y), 4)  # one per bin: (0.1 + 0.8 + 0.3) / 3
0.4
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayesprune.errors import ConfigError, DataError

DEFAULT_BINS = 15


def _check(probs: Tensor, y: Tensor, n_bins: int) -> None:
    if not isinstance(probs, Tensor) or probs.dim() != 2:
        raise DataError(
            f"calibration: probs must be a 2-d tensor (examples, classes), got "
            f"{tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__}"
        )
    if not isinstance(y, Tensor) or y.shape != probs.shape[:1]:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise DataError(f"calibration: y must have shape ({probs.shape[0]},), got {got}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigError(f"calibration: n_bins must be a positive integer, got {n_bins!r}")


def reliability_bins(probs: Tensor, y: Tensor, n_bins: int = DEFAULT_BINS) -> dict[str, Tensor]:
    """The reliability diagram of ``probs`` against labels ``y``.

    :param probs: ``(examples, classes)`` predicted probabilities.
    :param y: ``(examples,)`` integer labels.
    :param n_bins: number of equal-width confidence bins.
    :returns: float64 tensors of length ``n_bins``: ``bin_lower``, ``bin_upper``,
        ``confidence`` (mean confidence, NaN in an empty bin), ``accuracy`` (NaN in an
        empty bin) and ``count``.

    >>> import torch
    >>> bins = reliability_bins(torch.tensor([[0.95, 0.05]]), torch.tensor([0]), n_bins=2)
    >>> bins["count"].tolist(), bins["accuracy"].tolist()[1]
    ([0.0, 1.0], 1.0)
    """
    _check(probs, y, n_bins)
    conf, pred = probs.detach().double().max(dim=1)
    correct = (pred == y.to(pred.device)).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=conf.device)
    # bin m holds (edges[m], edges[m+1]]; a confidence of exactly 0 goes to the first bin
    idx = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    count.index_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).index_add_(0, idx, conf)
    acc_sum = torch.zeros_like(count).index_add_(0, idx, correct)
    empty = count == 0
    nan = torch.full_like(count, float("nan"))
    return {
        "bin_lower": edges[:-1].cpu(),
        "bin_upper": edges[1:].cpu(),
        "confidence": torch.where(empty, nan, conf_sum / count.clamp_min(1)).cpu(),
        "accuracy": torch.where(empty, nan, acc_sum / count.clamp_min(1)).cpu(),
        "count": count.cpu(),
    }


def expected_calibration_error(probs: Tensor, y: Tensor, n_bins: int = DEFAULT_BINS) -> float:
    """``Σ_m (n_m / N) |accuracy_m − confidence_m|`` over ``n_bins`` equal-width bins
    (see the module docstring). ``nan`` for zero examples."""
    bins = reliability_bins(probs, y, n_bins)
    n = float(bins["count"].sum())
    if n == 0:
        return float("nan")
    full = bins["count"] > 0
    gap = (bins["accuracy"][full] - bins["confidence"][full]).abs()
    return float((bins["count"][full] * gap).sum() / n)
