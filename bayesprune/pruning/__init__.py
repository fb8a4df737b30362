"""From posterior to smaller network: keep-sets, ``collapse`` and ``extract``."""

from bayesprune.pruning.collapse import collapse, layer_scores
from bayesprune.pruning.extract import extract, masked_copy
from bayesprune.pruning.keepset import KeepSet
from bayesprune.pruning.live import remove_units, removed_units, replay_removals

__all__ = [
    "KeepSet",
    "collapse",
    "extract",
    "layer_scores",
    "masked_copy",
    "remove_units",
    "removed_units",
    "replay_removals",
]
