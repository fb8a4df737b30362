"""Inference: the SVI loop, ELBO estimators, checkpoints, evaluation."""

from bayesprune.inference.callbacks import FitState, register_fit_option
from bayesprune.inference.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bayesprune.inference.evaluate import evaluate
from bayesprune.inference.fit import NonFiniteLossError, fit
from bayesprune.inference.losses import CompiledELBO, FusedELBO, TraceELBO
from bayesprune.inference.result import FitResult

__all__ = [
    "CheckpointError",
    "CompiledELBO",
    "FitResult",
    "FitState",
    "FusedELBO",
    "NonFiniteLossError",
    "TraceELBO",
    "evaluate",
    "fit",
    "load_checkpoint",
    "register_fit_option",
    "save_checkpoint",
]
