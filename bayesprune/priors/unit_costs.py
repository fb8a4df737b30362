"""What removing one unit of a layer saves: parameters and MACs, own and downstream.

Removing output unit ``u`` of a layer deletes its weight row (and bias), the matching
channel of a BatchNorm that follows it, and the matching input slice of every consumer
(the next Conv/Linear, including flatten→Linear blocks). torch-pruning's dependency
graph says which slices those are; :func:`bayesprune.metrics.count_flops` gives each
layer's MACs.

>>> import torch, torch.nn as nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
>>> c = unit_costs(net, ["0"], torch.zeros(1, 4))["0"]
>>> int(c["params"][0]), int(c["flops"][0])  # 4 weights + 1 bias + 3 consumer weights; 4 + 3 MACs
(8, 7)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from bayesprune.metrics import count_flops

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)


def unit_costs(
    module: nn.Module, layer_names: list[str], example_input: Tensor
) -> dict[str, dict[str, Tensor | float]]:
    """Per gated layer: ``params`` and ``flops`` (MACs) saved by removing each unit, and
    the means over all units of all the given layers (``params_mean``, ``flops_mean``)."""
    macs = {row["name"]: row["macs"] for row in count_flops(module, example_input)["layers"]}
    was = module.training
    module.eval()
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(
                module, example_inputs=example_input, verbose=False
            )
    finally:
        module.train(was)
    name_of = {m: n for n, m in module.named_modules()}
    out: dict[str, dict[str, Tensor | float]] = {}
    for name in layer_names:
        layer = module.get_submodule(name)
        n_units = int(layer.weight.shape[0])
        group = dg.get_pruning_group(
            layer, dg.get_pruner_of_module(layer).prune_out_channels, idxs=[0]
        )
        params = 0.0
        flops = 0.0
        for item in group.items:
            m = item.dep.target.module
            if not isinstance(m, _WEIGHTED):
                continue
            k = len(item.idxs)
            mname = name_of.get(m, "")
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                size = m.weight.shape[0] if m.weight is not None else m.num_features
                own = sum(p.numel() for p in m.parameters(recurse=False))
            else:
                size = m.in_features if isinstance(m, nn.Linear) else m.in_channels
                own = m.weight.numel()
            params += own * k / size
            flops += macs.get(mname, 0) * k / size
        out[name] = {
            "params": torch.full((n_units,), params),
            "flops": torch.full((n_units,), flops),
        }
    for kind in ("params", "flops"):
        allv = torch.cat([c[kind] for c in out.values()])
        mean = float(allv.mean()) if allv.numel() else 1.0
        for c in out.values():
            c[f"{kind}_mean"] = mean if mean > 0 else 1.0
    return out
