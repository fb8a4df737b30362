"""Non-Bayesian seeds and baselines sharing collapse/extract/metrics."""

from bayesprune.methods.l1_structured import l1_prune, l1_unit_keep
from bayesprune.methods.magnitude import magnitude_keep
from bayesprune.methods.train import accuracy, apply_masks, keep_masks, train

__all__ = [
    "accuracy",
    "apply_masks",
    "keep_masks",
    "l1_prune",
    "l1_unit_keep",
    "magnitude_keep",
    "train",
]
