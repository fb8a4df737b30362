"""The ``[budget]`` section of a spec: the size the fit ends at and the collapse cuts to.

One measure of :class:`~bayesprune.budget.Budget` -- exactly one of ``weights``, ``units``,
``params``, ``flops``, a fraction of the dense network in ``(0, 1]`` (``units`` may be a
table ``{layer = fraction}``) -- and, optionally, the settings of the fit's
:class:`~bayesprune.pruning.budget_control.BudgetControl` (its keyword arguments:
``every``, ``warmup``, ``ramp``, ``settle``, ``gain``, ...) as flat keys::

    [budget]
    flops = 0.1
    settle = 0.8        # cut the posterior to the budget at 80 % of the fit

``bayesprune fit`` passes ``budget=BudgetControl(...)`` to :func:`~bayesprune.fit`;
``bayesprune extract`` and ``report`` collapse with ``collapse(budget=...)``, so a
``[budget]`` spec has no ``[collapse]`` rule. ``--budget flops=0.2`` replaces the measure
and keeps the settings (:func:`with_measure`).

>>> check_budget_section({"units": {"fc1": 0.5}, "settle": 0.9}, "spec.toml")
>>> budget_of({"flops": 0.1, "settle": 0.8})
Budget(flops=0.1)
>>> check_budget_section({"flops": 0.1, "patience": 3}, "spec.toml")
Traceback (most recent call last):
...
bayesprune.errors.SpecError: spec.toml: [budget] unknown key(s) ['patience']; known: one measure of [...]
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from bayesprune.budget import METRICS, Budget
from bayesprune.errors import SpecError
from bayesprune.pruning.budget_control import BudgetControl

__all__ = ["CONTROL_KEYS", "budget_of", "check_budget_section", "control_of", "with_measure"]

#: the controller settings ``[budget]`` takes: ``BudgetControl``'s keyword arguments
CONTROL_KEYS = tuple(
    name
    for name, p in inspect.signature(BudgetControl.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)


def budget_of(section: Mapping[str, Any]) -> Budget:
    """The :class:`~bayesprune.budget.Budget` a (checked) ``[budget]`` section names."""
    return Budget.from_config({k: v for k, v in section.items() if k in METRICS})


def control_of(section: Mapping[str, Any]) -> BudgetControl:
    """A new controller for one fit: the budget with the section's settings."""
    settings = {k: v for k, v in section.items() if k in CONTROL_KEYS}
    return BudgetControl(budget_of(section), **settings)


def with_measure(section: Mapping[str, Any], budget: Budget) -> dict[str, Any]:
    """``section`` with its measure replaced by ``budget``'s; its settings kept."""
    return {**{k: v for k, v in section.items() if k not in METRICS}, **budget.config()}


def check_budget_section(section: Mapping[str, Any], source: str, prior: Any = None) -> None:
    """Refuse a ``[budget]`` section with an unknown key, not exactly one measure, a value
    out of range, or a measure ``prior`` cannot be held to (its ``budget_metrics``).

    :raises SpecError: naming the file, the section and the key.
    """
    where = f"{source}: [budget]"
    unknown = sorted(map(str, set(section) - set(METRICS) - set(CONTROL_KEYS)))
    if unknown:
        raise SpecError(
            f"{where} unknown key(s) {unknown}; known: one measure of {list(METRICS)} "
            f"and the settings {list(CONTROL_KEYS)}"
        )
    if not any(k in METRICS for k in section):
        raise SpecError(f"{where} needs one of {', '.join(METRICS)} (e.g. flops = 0.1)")
    try:
        control = control_of(section)
    except (TypeError, ValueError) as e:  # ConfigError, or a type BudgetControl did not expect
        message = str(e).removeprefix("Budget: ").removeprefix("BudgetControl: ")
        raise SpecError(f"{where} {message}") from None
    metric = control.budget.metric
    allowed = prior.budget_metrics() if prior is not None else METRICS
    if metric not in allowed:
        held = f"the {getattr(prior, 'name', type(prior).__name__)} prior"
        if hasattr(prior, "cost"):
            held += f" with cost = {prior.cost!r}"
        if not allowed:
            why = f"{held} has no strength a fit can adapt to a budget"
        else:
            why = f"{held} can be held to {', '.join(allowed)} only"
            if metric in ("flops", "params") and hasattr(prior, "cost"):
                why += f'; [prior] cost = "{metric}" or "mixed" prices {metric}'
        raise SpecError(f"{where} {metric}: {why}")
