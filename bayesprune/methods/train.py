"""Plain PyTorch training: the dense baseline, and fine-tuning under fixed masks.

The same in-memory index-slice batches as :func:`bayesprune.fit`, one Adam
optimizer, cross-entropy -- no Pyro. Used by the baselines (magnitude pruning
with and without fine-tune) and by the benchmarks as the "plain" reference.

>>> import torch.nn as nn
>>> from bayesprune.data import synthetic_classification
>>> data = synthetic_classification(n_train=64, input_shape=(4,), n_classes=2)
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> [round(h["seconds"] >= 0) for h in train(net, data, epochs=2, batch_size=16)]
[1, 1]
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bayesprune.data.dataset import Dataset
from bayesprune.inference.schedules import make_schedule
from bayesprune.pruning.keepset import KeepSet


@torch.no_grad()
def apply_masks(module: nn.Module, keep: dict[str, KeepSet]) -> None:
    """Zero the weights outside each layer's ``weight_mask`` (in place)."""
    for name, ks in keep.items():
        if ks.weight_mask is not None:
            w = module.get_submodule(name).weight
            w.mul_(ks.weight_mask.to(w.device, w.dtype))


def train(
    module: nn.Module,
    data: Dataset,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    keep: dict[str, KeepSet] | None = None,
    device: str | torch.device | None = None,
    schedule: str | None = None,
) -> list[dict[str, Any]]:
    """Train ``module`` in place with Adam on cross-entropy; returns one record per epoch.

    :param keep: if given, the unstructured masks are held fixed: masked weights are zeroed
        after every step (fine-tuning a pruned network).
    :param schedule: ``None`` or ``"cosine"`` (per step, to zero), as in :func:`bayesprune.fit`.
    """
    if device is not None:
        module.to(device)
        data = data.to(device)
    masks = {}
    if keep:
        apply_masks(module, keep)
        masks = {
            module.get_submodule(n).weight: k.weight_mask.to(data.device)
            for n, k in keep.items()
            if k.weight_mask is not None
        }
    opt = torch.optim.Adam(module.parameters(), lr=lr, fused=True)  # same optimizer as fit()
    sched = make_schedule(opt, schedule, epochs * data.num_batches(batch_size))
    history = []
    for epoch in range(epochs):
        module.train()
        t0 = time.perf_counter()
        total = torch.zeros((), device=data.device)
        n = 0
        for xb, yb in data.batches(batch_size, epoch=epoch, seed=seed):
            loss = F.cross_entropy(module(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if masks:
                with torch.no_grad():
                    for w, m in masks.items():
                        w.mul_(m)
            total = total + loss.detach()
            n += 1
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(total) / max(n, 1),
                "seconds": time.perf_counter() - t0,
            }
        )
    return history


@torch.inference_mode()
def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy of ``module`` (eval mode) on ``(x, y)``."""
    was = module.training
    module.eval()
    correct = sum(
        int((module(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum())
        for i in range(0, x.shape[0], batch_size)
    )
    module.train(was)
    return correct / max(x.shape[0], 1)
