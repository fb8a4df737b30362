"""Gates that multiply a parameter instead of a module's output.

A gate site whose meta names a ``param`` (relative to its layer) multiplies that
parameter, for the duration of one run of the model, by the gate values repeated
``repeat`` times each along dimension ``dim``. Head gates use it
(:mod:`bayesprune.priors.head_gates`): ``out_proj.weight`` of an attention layer, its
columns, ``head_dim`` columns per head. If a sample site replaces the same parameter, the
gate multiplies the sampled value.

>>> import torch
>>> from bayesprune.sites import Site
>>> gate = Site("attn.gate", "attn", "gate", (2,),
...             info=(("param", "out_proj.weight"), ("repeat", 2), ("dim", 1)))
>>> w = torch.ones(3, 4)
>>> gated_parameters([gate], {"attn.gate": torch.tensor([1.0, 0.0])},
...                  {"attn.out_proj.weight": w})["attn.out_proj.weight"]
tensor([[1., 1., 0., 0.],
        [1., 1., 0., 0.],
        [1., 1., 0., 0.]])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch.nn as nn
from torch import Tensor

from bayesprune.sites import Site, join


def is_param_gate(site: Site) -> bool:
    """Whether gate ``site`` multiplies a parameter (meta ``param``), not an output."""
    return "param" in site.meta


def gated_parameters(
    gates: Iterable[Site],
    values: Mapping[str, Tensor],
    overrides: Mapping[str, Tensor],
    module: nn.Module | None = None,
) -> dict[str, Tensor]:
    """``{parameter name: gated value}`` for every parameter gate among ``gates``.

    :param gates: gate sites (those without a ``param`` are skipped).
    :param values: the site values of this run.
    :param overrides: parameter values already put in place for this run (sampled
        weights), which the gate multiplies instead of the module's own.
    :param module: where to read a parameter not in ``overrides``.
    """
    out: dict[str, Tensor] = {}
    for s in gates:
        meta = s.meta
        if "param" not in meta:
            continue
        name = join(s.layer, meta["param"])
        w = overrides.get(name)
        if w is None:
            if module is None:
                raise KeyError(f"gated_parameters: no value for parameter {name!r}")
            w = module.get_parameter(name)
        z = values[s.name].repeat_interleave(int(meta.get("repeat", 1)))
        shape = [1] * w.dim()
        shape[meta["dim"]] = -1
        out[name] = w * z.to(w.dtype).reshape(shape)
    return out
