"""What a user asks for: the dense network's size, cut to a fraction.

A :class:`Budget` names exactly one measure of the network and the fraction of the
dense network's value it may keep:

- ``weights``: prunable weights left nonzero (the weights of the layers carrying the
  prior; unstructured priors such as per-weight HALO);
- ``units``: units / filters (or blocks, under block gates) left -- one fraction over
  every gated unit, or ``{layer: fraction}`` per layer;
- ``params``: parameters of the whole extracted network (every layer, biases and
  BatchNorm included);
- ``flops``: multiply-accumulates per example of the whole extracted network.

``fit(..., budget=Budget(flops=0.1))`` adapts the prior's strength during the fit so the
posterior ends at the budget (:mod:`bayesprune.pruning.budget_control`), and
``collapse(net, guide, budget=...)`` cuts the posterior to it exactly, never above
(:mod:`bayesprune.pruning.budget_cut`).

This module sits on the ground floor: it only checks and names the request.

>>> Budget(flops=0.1)
Budget(flops=0.1)
>>> Budget.parse("weights=0.02").fraction
0.02
>>> Budget(units={"fc1": 0.5, "fc2": 0.25}).per_layer
{'fc1': 0.5, 'fc2': 0.25}
>>> Budget(weights=0.02, flops=0.1)
Traceback (most recent call last):
...
bayesprune.errors.ConfigError: Budget: give exactly one of weights, units, params, flops; got weights and flops
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Mapping
from typing import Any

from bayesprune.errors import ConfigError

__all__ = ["METRICS", "Budget"]

#: what a budget can count, in the order the constructor takes them
METRICS = ("weights", "units", "params", "flops")


def _fraction(field: str, value: Any) -> float:
    number = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an int too large for a float: out of range
            number = float(value)
    if not (math.isfinite(number) and 0 < number <= 1):
        raise ConfigError(
            f"Budget: {field} must be a fraction of the dense network in (0, 1], got {value!r}"
        )
    return number


class Budget:
    """A size to end at, as a fraction of the dense network (exactly one field).

    :param weights: fraction of the prunable weights kept nonzero.
    :param units: fraction of gated units (blocks under block gates) kept: a number over
        all of them, or ``{layer name: fraction}`` for each named layer.
    :param params: fraction of the whole network's parameters kept.
    :param flops: fraction of the whole network's MACs per example kept.
    :raises ConfigError: none or several fields given, or a fraction outside (0, 1].
    """

    __slots__ = ("_metric", "_value")

    def __init__(
        self,
        weights: float | None = None,
        units: float | Mapping[str, float] | None = None,
        params: float | None = None,
        flops: float | None = None,
    ) -> None:
        given = {
            k: v
            for k, v in zip(METRICS, (weights, units, params, flops), strict=True)
            if v is not None
        }
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ConfigError(f"Budget: give exactly one of {', '.join(METRICS)}; got {got}")
        ((metric, value),) = given.items()
        if isinstance(value, Mapping):
            if metric != "units":
                raise ConfigError(f"Budget: only units takes per-layer fractions, not {metric}")
            if not value:
                raise ConfigError("Budget: units per layer needs at least one layer")
            value = {str(k): _fraction(f"units[{k!r}]", v) for k, v in value.items()}
        else:
            value = _fraction(metric, value)
        self._metric: str = metric
        self._value: float | dict[str, float] = value

    @property
    def metric(self) -> str:
        """``"weights"``, ``"units"``, ``"params"`` or ``"flops"``."""
        return self._metric

    @property
    def per_layer(self) -> dict[str, float] | None:
        """``{layer: fraction}`` for a per-layer units budget, else ``None``."""
        return dict(self._value) if isinstance(self._value, dict) else None

    @property
    def fraction(self) -> float:
        """The fraction of the dense network to keep (for a per-layer units budget: the
        fraction of all units the per-layer fractions leave is not known here, so this
        raises -- use :attr:`per_layer`)."""
        if isinstance(self._value, dict):
            raise ConfigError("Budget: a per-layer units budget has no single fraction")
        return self._value

    def config(self) -> dict[str, Any]:
        """``{metric: value}``: what ``Budget(**config)`` rebuilds (JSON and TOML safe)."""
        value = self._value
        return {self._metric: dict(value) if isinstance(value, dict) else value}

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``"flops=0.1"`` (the CLI's ``--budget``) as a budget.

        >>> Budget.parse("units = 0.25")
        Budget(units=0.25)
        """
        if not isinstance(text, str) or text.count("=") != 1:
            raise ConfigError(
                f"Budget: expected METRIC=FRACTION with METRIC one of {', '.join(METRICS)} "
                f"(e.g. flops=0.1), got {text!r}"
            )
        key, _, raw = (part.strip() for part in text.partition("="))
        if key not in METRICS:
            raise ConfigError(f"Budget: unknown measure {key!r}; one of {', '.join(METRICS)}")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"Budget: {key} must be a number in (0, 1], got {raw!r}") from None
        return cls(**{key: value})

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Budget:
        """The inverse of :meth:`config`; unknown keys are named."""
        if not isinstance(config, Mapping):
            raise ConfigError(f"Budget: expected a table like {{flops = 0.1}}, got {config!r}")
        unknown = sorted(set(config) - set(METRICS))
        if unknown:
            raise ConfigError(f"Budget: unknown field(s) {unknown}; one of {', '.join(METRICS)}")
        return cls(**dict(config))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Budget) and self.config() == other.config()

    def __hash__(self) -> int:
        # equal budgets hash alike: a per-layer table compares as a dict, in any order
        value = self._value
        return hash(
            (self._metric, tuple(sorted(value.items())) if isinstance(value, dict) else value)
        )

    def __repr__(self) -> str:
        return f"Budget({self._metric}={self._value!r})"
