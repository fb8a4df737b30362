"""The ``[method]`` section of a spec: a non-Bayesian baseline instead of a prior and guide.

A spec with ``[method]`` has no ``[prior]``, ``[guide]``, ``[collapse]`` or ``[pretrain]``:
``[fit]`` is the dense training (:func:`bayesprune.methods.train`, the one fit loop), then
the method prunes the trained network and fine-tunes it with the pruned entries held at 0.

``name = "magnitude"`` (:func:`bayesprune.methods.magnitude_keep`, unstructured):
  ``keep`` (fraction of weights kept, required), ``scope`` (``"global"`` | ``"layer"``),
  ``layers``, ``finetune_epochs`` (default 0), ``finetune_lr`` (default ``[fit] lr``).

``name = "l1_structured"`` (:func:`bayesprune.methods.l1_prune`, whole units / filters):
  ``keep`` (fraction of units kept, required), ``scope`` (``"layer"`` | ``"global"``),
  ``steps`` (rounds of iterative pruning, each followed by the fine-tune), ``layers``,
  ``include_output``, ``min_units``, ``finetune_epochs``, ``finetune_lr``.

``layers`` is what ``[prior] layers`` is: names of ``torch.nn`` classes, module names or
glob patterns.

>>> check_method({"name": "magnitude", "keep": 0.1, "scope": "layer"}, "spec.toml")
>>> check_method({"name": "magnitude", "keep": 0.1, "steps": 3}, "spec.toml")
Traceback (most recent call last):
...
bayesprune.errors.SpecError: spec.toml: [method] unknown key(s) ['steps'] for magnitude; known: [...]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn

from bayesprune.errors import SpecError
from bayesprune.methods.l1_structured import pruned_layers
from bayesprune.nn.selection import select_layers
from bayesprune.priors.base import DEFAULT_LAYER_TYPES

#: keys each method takes, with their defaults (``keep`` is required)
METHODS: dict[str, dict[str, Any]] = {
    "magnitude": {
        "keep": None,
        "scope": "global",
        "layers": None,
        "finetune_epochs": 0,
        "finetune_lr": None,
    },
    "l1_structured": {
        "keep": None,
        "scope": "layer",
        "steps": 1,
        "layers": None,
        "include_output": False,
        "min_units": 1,
        "finetune_epochs": 0,
        "finetune_lr": None,
    },
}
#: ``[fit]`` keys a method run does not use (no sites: no roles, no gates to remove)
UNUSED_FIT = {"role_lr": None, "remove_dead": False, "checkpoint_every": None}


def check_method(section: Mapping[str, Any], source: str) -> None:
    """Validate a ``[method]`` table.

    :raises SpecError: naming the file and the key, for an unknown name or key or a bad value.
    """
    where = f"{source}: [method]"
    name = section.get("name")
    if not isinstance(name, str) or name not in METHODS:
        raise SpecError(f"{where} name must be one of {sorted(METHODS)}, got {name!r}")
    known = METHODS[name]
    bad = sorted(set(section) - set(known) - {"name"})
    if bad:
        raise SpecError(f"{where} unknown key(s) {bad} for {name}; known: {sorted(known)}")
    opts = {**known, **section}
    keep = opts["keep"]
    if keep is None:
        raise SpecError(f"{where} {name} needs keep (the fraction kept, e.g. keep = 0.1)")
    if not _is_number(keep) or not 0 < keep <= 1:
        raise SpecError(f"{where} keep must be a fraction in (0, 1], got {keep!r}")
    scopes = ("global", "layer")
    if opts["scope"] not in scopes:
        raise SpecError(f"{where} scope must be one of {list(scopes)}, got {opts['scope']!r}")
    for key, least in (("steps", 1), ("min_units", 1), ("finetune_epochs", 0)):
        if key in known and not (_is_int(opts[key]) and opts[key] >= least):
            raise SpecError(f"{where} {key} must be an integer >= {least}, got {opts[key]!r}")
    lr = opts["finetune_lr"]
    if lr is not None and not (_is_number(lr) and 0 < lr < float("inf")):
        raise SpecError(f"{where} finetune_lr must be a number > 0, got {lr!r}")
    if "include_output" in known and not isinstance(opts["include_output"], bool):
        raise SpecError(
            f"{where} include_output must be true or false, got {opts['include_output']!r}"
        )
    layer_selector(opts["layers"], source)


def method_options(section: Mapping[str, Any]) -> dict[str, Any]:
    """The method's options with their defaults filled in (``name`` left out)."""
    return {**METHODS[section["name"]], **{k: v for k, v in section.items() if k != "name"}}


def layer_selector(value: Any, source: str, section: str = "method") -> Any:
    """TOML ``layers`` (of ``[method]`` or ``[prior]``): names of torch.nn classes become
    types, other strings are module names or glob patterns."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise SpecError(
            f"{source}: {section}.layers must be a string or a list of strings, got {value!r}"
        )
    out: list[Any] = []
    for item in items:
        cls = getattr(nn, item, None)
        out.append(cls if isinstance(cls, type) and issubclass(cls, nn.Module) else item)
    return out


def method_layers(section: Mapping[str, Any], module: nn.Module, source: str) -> list[str]:
    """The layers the method prunes in ``module`` (the run's ``BayesianNet.layer_names``).

    :raises SpecError: when the selector picks nothing or names a missing layer.
    """
    opts = method_options(section)
    layers = layer_selector(opts["layers"], source)
    try:
        if section["name"] == "l1_structured":
            return pruned_layers(module, layers, opts["include_output"])
        return select_layers(module, layers, default=DEFAULT_LAYER_TYPES)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{source}: [method] {e}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
