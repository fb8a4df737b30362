"""torchvision's classification models: gated by ``sparsify``, half their units cut by
``extract``, output equal to the collapsed model -- or refused at ``sparsify``, naming the
layer and why. One small representative per family here; every model of at most 150 M
parameters with ``BAYESPRUNE_FULL_WALK=1`` (about half an hour on 2 cores; the script
``benchmarks/torchvision_walk.py`` runs the same walk and writes a table)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from bayesprune.nn import removable

_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "torchvision_walk.py"
_spec = importlib.util.spec_from_file_location("torchvision_walk", _SCRIPT)
walk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(walk)

#: model -> reasons some of its layers must be left out for (others may be too)
FAMILIES = {
    "alexnet": set(),
    "vgg11": set(),
    "resnet18": set(),
    "resnext50_32x4d": set(),  # grouped convs: tied gates
    "mobilenet_v2": set(),
    "mobilenet_v3_small": set(),
    "efficientnet_b0": set(),
    "mnasnet0_5": set(),
    "squeezenet1_1": set(),
    "densenet121": set(),
    "regnet_x_400mf": set(),  # grouped convs: tied gates
    "googlenet": {removable.NOT_RUN},  # auxiliary heads
    "inception_v3": {removable.NOT_RUN},
    "shufflenet_v2_x0_5": {removable.UNTRACED},  # the channel shuffle
    "convnext_tiny": {removable.MIXING, removable.PARAMETER},  # LayerNorm, layer scale
    "swin_t": {removable.MIXING, removable.NOT_RUN},  # LayerNorm; F.linear(x, qkv.weight)
    "swin_v2_t": {removable.MIXING, removable.PARAMETER},  # LayerNorm; the logit scale
    "maxvit_t": {removable.MIXING, removable.TP_FAILS},  # LayerNorm; q, k, v merged
    "vit_b_32": {removable.MIXING},  # the residual stream
}
FULL = os.environ.get("BAYESPRUNE_FULL_WALK") == "1"


def _models() -> list[str]:
    if not FULL:
        return list(FAMILIES)
    return [n for n in walk.models() if walk.too_large(n, 150e6) is None]


def check(row: dict) -> None:
    """Output-equal extraction, or a refusal at sparsify that names a layer and why."""
    if row["status"] == "refused at sparsify":
        assert "layer" in row["message"] and "'" in row["message"], row["message"]
        return
    assert row["status"] == "output-equal", row
    assert row["max_abs_masked"] > 1e-6, row  # not vacuous: "equal" is relative to it
    assert row["gated"] > 0 and row["params_kept"] < 1.0, row
    for reason, layers in row["skipped"].items():
        assert reason and layers and all(isinstance(n, str) and n for n in layers)


@pytest.mark.slow
@pytest.mark.parametrize("name", _models())
def test_extraction_is_output_equal_or_refused_at_sparsify(name):
    row = walk.walk_one(name, size=32)
    check(row)
    expected = FAMILIES.get(name, set())
    assert expected <= set(row.get("skipped", {})), (expected, row.get("skipped"))
