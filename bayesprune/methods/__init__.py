"""Non-Bayesian seeds and baselines sharing collapse/extract/metrics."""

from bayesprune.methods.magnitude import magnitude_keep
from bayesprune.methods.train import accuracy, apply_masks, train

__all__ = ["accuracy", "apply_masks", "magnitude_keep", "train"]
