"""What a subnetwork of a pruning space may cost: FLOPs, parameters, FLOPs per parameter.

``flops`` and ``params`` are ranges ``(lo, hi)`` of the subnetwork's cost as a fraction of
the dense network's (bounds included); ``ratio`` is a range of its FLOPs per parameter
(``2·MACs / params`` per example, absolute) -- the quantity He & Xiao (2023) refine a
space by. ``None`` leaves that cost free.

>>> import numpy as np
>>> c = Constraints(flops=(0.2, 0.5))
>>> c.accept(np.array([0.1, 0.3]), np.array([0.3, 0.3]), np.array([2.0, 2.0])).tolist()
[False, True]
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from bayesprune.errors import ConfigError

Range = tuple[float, float]


def check_range(owner: str, name: str, value: object, *, upper: float | None = None) -> Range:
    """``value`` as a ``(lo, hi)`` float pair with ``0 <= lo <= hi`` (``<= upper``)."""
    ok = (
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    )
    if ok:
        lo, hi = float(value[0]), float(value[1])
        ok = 0 <= lo <= hi < math.inf and (upper is None or hi <= upper)
    if not ok:
        bound = f" <= {upper}" if upper is not None else ""
        raise ConfigError(
            f"{owner}: {name} must be a pair (lo, hi) with 0 <= lo <= hi{bound}, got {value!r}"
        )
    return lo, hi


@dataclass(frozen=True)
class Constraints:
    """Cost ranges a subnetwork must fall in. See the module docstring."""

    flops: Range | None = None
    params: Range | None = None
    ratio: Range | None = None

    @classmethod
    def of(cls, owner: str, flops: object, params: object, ratio: object) -> Constraints:
        """Validated constraints; errors name ``owner`` and the argument."""
        return cls(
            None if flops is None else check_range(owner, "flops", flops),
            None if params is None else check_range(owner, "params", params),
            None if ratio is None else check_range(owner, "ratio", ratio),
        )

    @property
    def given(self) -> dict[str, Range]:
        """The constraints that are set, by argument name."""
        pairs = {"flops": self.flops, "params": self.params, "ratio": self.ratio}
        return {k: v for k, v in pairs.items() if v is not None}

    def accept(self, flops: np.ndarray, params: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """Which rows satisfy every constraint (``flops``/``params`` as fractions of dense,
        ``ratio`` absolute FLOPs per parameter). A tiny relative slack absorbs float error."""
        ok = np.ones(np.shape(flops), dtype=bool)
        for value, rng in ((flops, self.flops), (params, self.params), (ratio, self.ratio)):
            if rng is not None:
                lo, hi = rng
                ok &= (value >= lo * (1 - 1e-12)) & (value <= hi * (1 + 1e-12))
        return ok

    def disjoint(self, low: tuple[float, float], high: tuple[float, float]) -> str | None:
        """Name of a ``flops``/``params`` range that misses ``[low, high]`` entirely (the
        cheapest and dearest subnetworks' fractions), else ``None``."""
        for i, name in enumerate(("flops", "params")):
            rng = self.given.get(name)
            if rng is not None and (
                rng[1] < low[i] * (1 - 1e-12) or rng[0] > high[i] * (1 + 1e-12)
            ):
                return name
        return None
