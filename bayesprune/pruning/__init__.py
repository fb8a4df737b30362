"""From posterior to smaller network: keep-sets, ``collapse`` and ``extract``."""

from bayesprune.pruning.budget_control import BudgetControl
from bayesprune.pruning.budget_cost import CostModel
from bayesprune.pruning.budget_cut import BudgetReport, budget_masks
from bayesprune.pruning.collapse import KeepSets, collapse, layer_scores
from bayesprune.pruning.extract import extract, masked_copy
from bayesprune.pruning.inclusion import inclusion_kind, inclusion_probs
from bayesprune.pruning.keepset import KeepSet
from bayesprune.pruning.live import remove_units, removed_units, replay_removals
from bayesprune.pruning.predict import PruningForecast, predict_pruning
from bayesprune.pruning.remove_dead import RemoveDeadUnits, dead_units_keep

__all__ = [
    "BudgetControl",
    "BudgetReport",
    "CostModel",
    "KeepSet",
    "KeepSets",
    "PruningForecast",
    "RemoveDeadUnits",
    "collapse",
    "dead_units_keep",
    "extract",
    "inclusion_kind",
    "inclusion_probs",
    "layer_scores",
    "masked_copy",
    "predict_pruning",
    "budget_masks",
    "remove_units",
    "removed_units",
    "replay_removals",
]
