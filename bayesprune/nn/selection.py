"""Choosing which modules of a network get a prior.

``layers`` may be ``None`` (the prior's default layer types), a module type or
tuple of types, a module name or glob pattern (``"features.*"``), a list of
names/patterns/types, or a predicate ``f(name, module) -> bool``.

>>> import torch.nn as nn
>>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
>>> select_layers(net, nn.Linear, default=(nn.Linear,))
['0', '2']
>>> select_layers(net, "2", default=(nn.Linear,))
['2']
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from typing import Any

import torch.nn as nn

from bayesprune.errors import ConfigError, UnsupportedError

LayerSelector = None | type | str | Callable[[str, nn.Module], bool] | Iterable[Any]


def _matches(item: Any, name: str, module: nn.Module) -> bool:
    if isinstance(item, type):
        return isinstance(module, item)
    if isinstance(item, str):
        return name == item or fnmatch.fnmatchcase(name, item)
    if callable(item):
        return bool(item(name, module))
    raise _bad_selector(item)


def _bad_selector(item: Any) -> UnsupportedError:
    return UnsupportedError(
        f"layers: cannot select modules with {item!r} ({type(item).__name__}); "
        "use a module type, a name or glob pattern, or a predicate f(name, module)"
    )


def select_layers(
    module: nn.Module,
    layers: LayerSelector,
    *,
    default: tuple[type, ...],
    supported: tuple[type, ...] | None = None,
) -> list[str]:
    """Names of the submodules of ``module`` chosen by ``layers``, in module order.

    :param module: the user's network.
    :param layers: the selector (see the module docstring).
    :param default: module types used when ``layers`` is ``None``.
    :param supported: if given, glob patterns (names with ``*?[``) only pick modules of
        these types -- ``"features.*"`` means the prunable layers under ``features``, not
        its ReLUs. Exact names are taken as given (and checked by the prior).
    :raises ValueError: when a name or pattern matches nothing, or nothing is selected.
    """
    named = [(n, m) for n, m in module.named_modules() if n] or [("", module)]
    if layers is None:
        items: list[Any] = [default]
    elif (
        isinstance(layers, (type, str))
        or callable(layers)
        and not isinstance(layers, type)
        or isinstance(layers, tuple)
        and all(isinstance(t, type) for t in layers)
    ):
        items = [layers]
    elif isinstance(layers, Iterable):
        items = list(layers)
    else:
        raise _bad_selector(layers)
    chosen: list[str] = []
    for item in items:
        hits = [
            n
            for n, m in named
            if (isinstance(m, item) if isinstance(item, tuple) else _matches(item, n, m))
        ]
        if isinstance(item, str) and supported is not None and any(c in item for c in "*?["):
            hits = [n for n in hits if isinstance(module.get_submodule(n), supported)]
        if isinstance(item, str) and not hits:
            known = ", ".join(n for n, _ in named[:20])
            raise ConfigError(f"layers: {item!r} matches no module; modules are: {known}")
        chosen.extend(h for h in hits if h not in chosen)
    if not chosen:
        raise ConfigError(
            f"layers: the selector {layers!r} chose no module of {type(module).__name__}"
        )
    order = {n: i for i, (n, _) in enumerate(named)}
    return sorted(chosen, key=order.__getitem__)
