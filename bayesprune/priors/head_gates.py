"""Gates on attention heads: the sites :class:`~bayesprune.priors.UnitGates` puts on an
``nn.MultiheadAttention`` layer.

The heads are the layer's units (:mod:`bayesprune.heads`): one gate per head, with the
same sites and the same closed-form ELBO terms as any unit gate::

    π_h ~ Flattening(γ_h)            site "<layer>.gate_prob"     shape (num_heads,)
    z_h | π_h ~ Bernoulli(π_h)       site "<layer>.gate"          multiplies head h's output

The gate is a *parameter* gate: while the model runs, the layer's ``out_proj.weight`` is
replaced by ``W * z.repeat_interleave(head_dim)`` along its columns (the columns that read
head ``h``), which multiplies head ``h``'s output by ``z_h`` before the heads are mixed --
on every code path of ``nn.MultiheadAttention``, its fused inference kernel included,
since all of them read ``out_proj.weight``. The gate site's meta says so:
``("place", "heads")``, ``("param", "out_proj.weight")``, ``("repeat", head_dim)`` and
``("dim", 1)`` (:mod:`bayesprune.nn.param_gates` applies it).

No weight prior: the attention layer's weights stay deterministic parameters, trained by
maximum likelihood alongside the guide (``weight_prior`` applies to the Linear and Conv
layers of the same prior).

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import UnitGates
>>> net = sparsify(nn.Sequential(nn.MultiheadAttention(8, 4)), UnitGates(), layers="0")
>>> [(s.name, s.shape) for s in net.sites]
[('0.gate_prob', (4,)), ('0.gate', (4,))]
>>> net.site("0.gate").meta["repeat"], net.site("0.gate").meta["param"]
(2, 'out_proj.weight')
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from bayesprune.heads import OUT_PROJ, head_dim, n_heads
from bayesprune.sites import Site

#: where a head gate sits (site meta ``place``)
PLACE = "heads"


def head_gate_sites(prior: Any, name: str, layer: nn.Module) -> list[Site]:
    """The ``<name>.gate_prob`` and ``<name>.gate`` sites of attention layer ``name``: one
    gate per head, priced by ``prior.prices`` (uniform, or what each head saves), built by
    ``prior.gate_sites`` (a :class:`~bayesprune.priors.UnitGates`)."""
    heads = n_heads(layer)
    gammas = tuple(float(g) for g in prior.prices(name, heads))
    extra = (("place", PLACE), ("param", OUT_PROJ), ("repeat", head_dim(layer)))
    return prior.gate_sites(name, (heads,), gammas, target=name, dim=1, extra=extra)
