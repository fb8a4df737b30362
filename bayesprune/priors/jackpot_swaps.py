"""Mask arithmetic of the lottery-jackpot search: per-layer sizes, top-k masks, restricted swaps.

- :func:`layer_keep_counts`: how many weights each layer keeps -- the paper's per-layer rates
  from one *global* magnitude threshold: layer ``l`` keeps as many weights as it has among
  the ``round((1 - sparsity) · N)`` largest ``|w|`` over all chosen layers (``N`` weights).
- :func:`top_k_mask`: the ``k`` largest scores of one layer.
- :func:`swap_fraction`: the decaying swap budget, ``(1 - e/N)^4`` in epoch ``e`` of a
  horizon of ``N`` epochs (0 from epoch ``N`` on). The reference code computes
  ``ceil((1 - e/N)^4)``, which is 1 for every ``e < N`` (its restriction never bites); here
  the fraction itself multiplies the number of proposed swaps: :func:`restricted_swaps`.
- :func:`restricted_swaps`: the step's proposal (the top-``k`` of the new scores) cut down to
  its ``ceil(d · fraction)`` most confident swaps, ``d`` being the number of proposed swaps:
  the best-scored weights outside the mask come in and, in equal number, the worst-scored
  inside go out. Computed on the device without reading anything back (one sort per layer).

>>> import torch
>>> scores = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.6, 0.2])
>>> mask = torch.tensor([False, False, True, False, True, True])  # k = 3, top-3 is {0, 1, 3}
>>> new, proposed, budget = restricted_swaps(scores, mask, 3, fraction=0.5)
>>> int(proposed), int(budget), new.nonzero().flatten().tolist()  # ceil(3 · 0.5) = 2 swaps
(3, 2, [0, 1, 4])
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def layer_keep_counts(weights: dict[str, Tensor], sparsity: float) -> dict[str, int]:
    """Weights kept per layer under one global magnitude threshold (see the module docstring).

    :param weights: the frozen weights by layer name.
    :param sparsity: the fraction removed over all of them, in ``(0, 1)``.
    """
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    k = round((1.0 - sparsity) * flat.numel())
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k:
        keep[torch.topk(flat, k, sorted=False).indices] = True
    counts, offset = {}, 0
    for name, w in weights.items():
        counts[name] = int(keep[offset : offset + w.numel()].sum())
        offset += w.numel()
    return counts


@torch.no_grad()
def top_k_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` largest ``scores`` (shaped like them)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.detach().flatten(), k, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def swap_fraction(epoch: int, horizon: int) -> float:
    """``(1 - epoch/horizon)^4`` for ``epoch < horizon``, else 0 (0-based epochs).

    >>> [swap_fraction(e, 4) for e in range(5)]
    [1.0, 0.31640625, 0.0625, 0.00390625, 0.0]
    """
    if epoch >= horizon:
        return 0.0
    return (1.0 - epoch / horizon) ** 4


@torch.no_grad()
def restricted_swaps(
    scores: Tensor, mask: Tensor, k: int, fraction: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The mask after at most ``ceil(d · fraction)`` swaps toward the top-``k`` of ``scores``.

    :param scores: the layer's scores after the step.
    :param mask: its current mask (bool, exactly ``k`` ones).
    :param k: the layer's kept count.
    :param fraction: the budget as a fraction of the proposed swaps (``None``: no limit, the
        new mask is the top-``k`` itself).
    :returns: ``(candidate mask, d proposed swaps, swaps made)`` -- the last two as 0-dim
        device tensors (int64), so nothing is read back.
    """
    flat = scores.detach().flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    inside = mask.flatten()[order]  # current mask in descending score order
    proposed = (~inside[:k]).sum()  # weights of the top-k now outside the mask
    if fraction is None:
        budget = proposed
    else:
        budget = torch.ceil(proposed.double() * float(fraction)).long()
    # rank of an outside weight among the outside ones, best score first
    rank_out = torch.cumsum(~inside, 0) - 1
    # rank of an inside weight among the inside ones, worst score first
    rank_in = torch.flip(torch.cumsum(torch.flip(inside, (0,)), 0), (0,)) - 1
    come_in = ~inside & (rank_out < budget)
    go_out = inside & (rank_in < budget)
    new_sorted = (inside & ~go_out) | come_in
    new = torch.empty_like(new_sorted)
    new[order] = new_sorted
    return new.reshape(mask.shape), proposed, budget
