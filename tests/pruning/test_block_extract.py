"""Identity keep-sets (residual blocks removed whole), alone and with unit keep-sets.

The central contract holds here too: the extracted network equals the collapsed
(masked) model on the same input, and it is physically smaller.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from bayesprune import sparsify
from bayesprune.blocks import Shortcut
from bayesprune.export.pruned_network import architecture, load_pruned, save_pruned
from bayesprune.guides import MAP
from bayesprune.priors import BlockGates
from bayesprune.priors.gates import probs_key
from bayesprune.pruning import KeepSet, collapse, extract, masked_copy
from bayesprune.pruning.collapse import _block_keep
from tests.helpers import n_params, randomise_batchnorm, resnet


def randomised_resnet() -> nn.Module:
    # non-trivial BatchNorms: a branch is far from 0 unless removed
    return randomise_batchnorm(resnet()).eval()


def ident() -> KeepSet:
    return KeepSet(identity=True, n_units=1)


def units(kept: list[int], n: int) -> KeepSet:
    return KeepSet(units=torch.tensor(kept), n_units=n)


# channels at width 1/4: stem and stage 1: 4, stage 2: 8, stage 3: 16
CASES = {
    "one-block": {"layer1.1": ident()},
    "downsampling-block": {"layer2.0": ident(), "layer3.0": ident()},
    "kept-block-is-a-no-op": {"layer1.0": KeepSet(identity=False, n_units=1)},
    "whole-stage": {"layer3.0": ident(), "layer3.1": ident(), "layer3.2": ident()},
    "with-units-outside": {
        "layer1.1": ident(),
        "layer1.0.conv1": units([0, 2], 4),
        "layer3.1.conv1": units([1, 5, 9], 16),
    },
    "units-inside-a-removed-block-are-ignored": {
        "layer2.1": ident(),
        "layer2.1.conv1": units([0], 8),
        "layer2.2.conv1": units([3, 4], 8),
    },
    "units-on-the-kept-shortcut": {
        "layer2.0": ident(),
        "layer2.0.downsample.0": units([0, 1, 2, 5], 8),
        "layer2.1.conv2": units([0, 1, 2, 3, 5], 8),
        "layer2.2.conv2": units([0, 1, 2, 5, 7], 8),
    },
    "residual-stream-of-stage-1": {
        "layer1.2": ident(),
        "conv1": units([0, 1, 3], 4),
        "layer1.0.conv2": units([1, 3], 4),
        "layer1.1.conv2": units([0, 3], 4),
        "layer1.2.conv2": units([0], 4),  # inside the removed block: not a vote
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_extracted_equals_collapsed_and_is_smaller(case):
    keep = CASES[case]
    module = randomised_resnet()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.randn(6, 3, 8, 8)
    collapsed = masked_copy(module, keep, example_input=x[:1]).eval()
    small = extract(module, keep, example_input=x[:1]).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), collapsed(x), rtol=1e-5, atol=1e-5)
    removed = [n for n, k in keep.items() if k.identity]
    for n in removed:
        assert isinstance(small.get_submodule(n), Shortcut), n
        assert not hasattr(small.get_submodule(n), "conv1")
    if removed:
        assert n_params(small) < n_params(module)
        with torch.no_grad():
            assert not torch.allclose(collapsed(x), module(x), atol=1e-3)
    # the user's network is untouched
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert not any(isinstance(m, Shortcut) for m in module.modules())


def test_kept_units_of_the_shortcut_follow_the_coupling_rule():
    small = extract(
        randomised_resnet(),
        CASES["units-on-the-kept-shortcut"],
        example_input=torch.zeros(1, 3, 8, 8),
    )
    # a channel of the residual stream goes only if every keep-set on it drops it
    assert small.layer2[0].downsample[0].out_channels == len({0, 1, 2, 3, 5, 7})
    assert small.layer2[1].conv2.out_channels == small.layer3[0].conv1.in_channels == 6


def test_identity_needs_a_residual_block():
    with pytest.raises(ValueError, match="'layer1.0.conv1'.*not a residual block"):
        extract(randomised_resnet(), {"layer1.0.conv1": ident()})
    with pytest.raises(ValueError, match="not a residual block"):
        masked_copy(randomised_resnet(), {"fc": ident()})


class SigmoidBlock(nn.Module):
    """Declares a branch end but applies a sigmoid after the sum: its shortcut is not relu."""

    branch_end = "bn"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.downsample = None

    def forward(self, x):
        return torch.sigmoid(self.bn(self.conv(x)) + x)


def test_extract_checks_the_replacement():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), SigmoidBlock(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"replacing blocks \['1'\].*as_shortcut"):
        extract(net, {"1": ident()}, example_input=x)
    small = extract(net, {"1": ident()}, example_input=x, check=False)
    assert isinstance(small[1], Shortcut)


# --- collapse --------------------------------------------------------------------------------


def test_collapse_gives_identity_keep_sets_below_one_half():
    net = sparsify(randomised_resnet(), BlockGates())
    guide = MAP(net)
    theta = {"layer1.1": 0.0, "layer2.0": 0.3, "layer3.2": 0.5, "layer3.1": 0.51}
    with torch.no_grad():
        for s in net.gates:
            guide.gate_theta(s).fill_(theta.get(s.layer, 1.0))
    keep = collapse(net, guide)
    assert {n for n, k in keep.items() if k.identity} == {"layer1.1", "layer2.0", "layer3.2"}
    assert set(keep) == set(net.layer_names)
    assert [keep["layer1.1"].n_kept, keep["layer3.1"].n_kept] == [0, 1]
    assert [keep["layer1.1"].fraction_kept, keep["layer3.1"].fraction_kept] == [0.0, 1.0]
    # a fraction ranks blocks by θ globally: keep 6 of 9 (five at θ = 1, then layer3.1)
    ranked = collapse(net, guide, keep=6 / 9)
    assert sum(not k.identity for k in ranked.values()) == 6
    assert not ranked["layer3.1"].identity and ranked["layer3.2"].identity
    x = torch.randn(3, 3, 8, 8)
    point = guide.point()
    assert point[probs_key("layer2.0.gate")].shape == (1,)
    with torch.no_grad():
        torch.testing.assert_close(
            extract(net, keep).eval()(x), net.predict(point, x), rtol=1e-5, atol=1e-5
        )


def test_collapse_rejects_a_weightless_non_block():
    with pytest.raises(ValueError, match="'act'.*not a block"):
        _block_keep("act", nn.ReLU(), torch.ones(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="one score for a whole residual block"):
        _block_keep("b", randomised_resnet().layer1[0], torch.ones(2, dtype=torch.bool))


# --- save / load -------------------------------------------------------------------------------


def test_save_and_load_a_network_with_identity_blocks(tmp_path):
    module = randomised_resnet()
    keep = CASES["units-on-the-kept-shortcut"] | {"layer3.2": ident(), "layer1.0": ident()}
    keep["layer3.1"] = KeepSet(identity=False, n_units=1)
    small = extract(module, keep, example_input=module.example_input()).eval()
    save_pruned(small, tmp_path, network_config=module.config, keep=keep, input_shape=(3, 8, 8))
    arch = json.loads((tmp_path / "model.json").read_text())
    arch = arch.get("architecture", arch)
    assert sorted(arch["identity"]) == ["layer1.0", "layer2.0", "layer3.2"]
    back = load_pruned(tmp_path)
    assert isinstance(back.layer3[2], Shortcut) and not isinstance(back.layer3[1], Shortcut)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x))
    assert architecture(module.config, {"fc": units([0], 10)}, (3, 8, 8)).get("identity") is None
