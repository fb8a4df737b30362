"""Which layers' units can be removed exactly, and what ``sparsify`` does with the others."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn

from bayesprune import sparsify
from bayesprune.errors import UnsupportedError
from bayesprune.nn import removable
from bayesprune.nn.removable import removal_problems
from bayesprune.priors import HALO, UnitGates
from bayesprune.pruning import KeepSet, extract, masked_copy
from tests.helpers import CatIntoGrouped

X = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
IMG = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))


class AuxHead(nn.Module):
    """An auxiliary classifier used in training only (GoogLeNet, Inception)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.aux = nn.Linear(8, 5)
        self.aux_out = nn.Linear(5, 2)
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.body(x))
        y = self.out(torch.relu(self.hidden(h)))
        if self.training:
            return y, self.aux_out(torch.relu(self.aux(h)))
        return y


class PreNorm(nn.Module):
    """A residual stream with LayerNorm (a transformer block's MLP)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.up = nn.Linear(8, 16)
        self.down = nn.Linear(16, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.down(torch.relu(self.up(self.norm(h))))
        return self.head(h)


class Tokens(nn.Module):
    """A class token concatenated with the patch embeddings, plus a position embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Linear(4, 8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 4, 8))
        self.mlp = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):  # x: (B, 3, 4)
        t = self.patch(x)
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), t], 1) + self.pos
        return self.head(torch.relu(self.mlp(t))[:, 0])


class Gated(nn.Module):
    """A squeeze-excitation gate (Sigmoid times a coupled channel) and a plain Sigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.se = nn.Conv2d(6, 6, 1)
        self.sig = nn.Conv2d(6, 6, 1)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = h * torch.sigmoid(self.se(h.mean((2, 3), keepdim=True)))
        return self.out(torch.sigmoid(self.sig(h))).mean((2, 3))


class PlusOne(nn.Module):
    """``h + 1`` after a layer: f(0) = 1, an op the graph does not flag."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h)) + 1.0
        return self.out(torch.relu(self.c(h)))


def kinds(problems):
    return {n: r.kind for n, r in problems.items()}


def test_an_auxiliary_head_is_not_in_the_eval_forward():
    net = AuxHead()
    p = removal_problems(net, ["body", "aux", "hidden"], X)
    assert kinds(p) == {"aux": removable.NOT_RUN}


def test_units_coupled_to_a_layernorm_are_refused_naming_it():
    p = removal_problems(PreNorm(), ["embed", "up", "down"], X)
    assert kinds(p) == {"embed": removable.MIXING, "down": removable.MIXING}
    assert "'norm' (LayerNorm)" in p["embed"]


def test_units_coupled_to_a_class_token_or_position_embedding_are_refused():
    p = removal_problems(Tokens(), ["patch", "mlp"], torch.randn(2, 3, 4))
    assert kinds(p) == {"patch": removable.PARAMETER}
    assert "'cls_token'" in p["patch"] or "'pos'" in p["patch"]


def test_a_sigmoid_before_a_consumer_is_refused_but_not_one_times_a_zeroed_channel():
    p = removal_problems(Gated(), ["conv", "se", "sig"], IMG)
    assert kinds(p) == {"sig": removable.NONZERO}
    assert "Sigmoid before 'out'" in p["sig"]
    # the squeeze-excitation layers are cut exactly
    net = sparsify(Gated(), UnitGates(), layers=["conv", "se"], example_input=IMG)
    keep = {n: KeepSet(units=torch.tensor([0, 2, 3]), n_units=6) for n in ("conv", "se")}
    extract(net, keep, example_input=IMG)  # raises if it differs from the collapsed model


def test_the_output_layer_is_refused():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    assert kinds(removal_problems(net, ["0", "2"], X)) == {"2": removable.OUTPUT}


def test_units_only_part_of_a_grouped_convs_channels_are_refused():
    p = removal_problems(CatIntoGrouped(), ["a", "b", "gc"], IMG)
    assert kinds(p) == {"a": removable.GROUPED, "b": removable.GROUPED}
    assert "grouped convolution 'gc'" in p["a"]


def test_a_tied_grouped_conv_passes_and_its_trial_removes_a_whole_tie():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4), nn.ReLU(), nn.Conv2d(8, 2, 1)
    )
    assert removal_problems(net, ["0", "2"], IMG) == {}


def test_the_trial_finds_what_the_graph_cannot_show_and_only_that():
    p = removal_problems(PlusOne(), ["a", "b", "c"], X)
    assert kinds(p) == {"b": removable.CHANGES}
    assert removal_problems(PlusOne(), ["a", "b", "c"], X, trial=False) == {}


def test_the_module_is_not_changed():
    net = PreNorm()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    removal_problems(net, ["embed", "up", "down"], X)
    assert net.training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_attention_layers_are_left_to_the_head_gates():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.attn(x, x, x, need_weights=False)[0].mean(1))

    assert removal_problems(Attn(), ["attn"], torch.randn(2, 3, 8)) == {}


# --- sparsify ----------------------------------------------------------------------------------


def test_sparsify_leaves_out_what_cannot_be_removed_and_logs_why(caplog):
    with caplog.at_level(logging.INFO, logger="bayesprune.nn.sparsify"):
        net = sparsify(PreNorm(), UnitGates(), example_input=X)
    assert net.layer_names == ("up",)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # one line per reason
    assert removable.MIXING in lines[0] and "'embed'" in lines[0] and "'down'" in lines[0]


def test_sparsify_refuses_a_chosen_layer_naming_it_and_why():
    with pytest.raises(UnsupportedError, match=r"layer 'aux': not called by the forward pass"):
        sparsify(AuxHead(), UnitGates(), layers=["body", "aux"], example_input=X)
    with pytest.raises(UnsupportedError, match=r"layer 'down'.*LayerNorm"):
        sparsify(PreNorm(), HALO(per="unit"), layers=["up", "down"], example_input=X)


def test_without_an_example_input_or_for_a_per_weight_prior_nothing_is_checked():
    assert sparsify(PreNorm(), UnitGates(), layers=["embed", "down"]).layer_names == (
        "embed",
        "down",
    )
    net = sparsify(PreNorm(), HALO(), layers=["embed", "down"], example_input=X)
    assert net.layer_names == ("embed", "down")
    assert not HALO().removes_units and HALO(per="unit").removes_units


def test_nothing_removable_is_an_error_naming_the_reasons():
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    with pytest.raises(UnsupportedError, match=r"no layer .* '0': its units are coupled"):
        sparsify(net, UnitGates(), example_input=X)


def test_what_sparsify_gates_extracts_exactly():
    torch.manual_seed(1)
    module = PreNorm().eval()
    net = sparsify(module, UnitGates(), example_input=X)
    keep = {"up": KeepSet(units=torch.tensor([1, 4, 9, 15]), n_units=16)}
    small = extract(net, keep, example_input=X)
    assert small.up.out_features == 4 and small.down.in_features == 4
    with torch.no_grad():
        torch.testing.assert_close(small(X), masked_copy(net, keep, example_input=X)(X))


def test_units_through_an_op_torch_pruning_cannot_map_are_refused(monkeypatch):
    from torch_pruning.dependency import index_mapping

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)
            self.b = nn.Linear(4, 5)
            self.c = nn.Linear(8, 6)
            self.out = nn.Linear(6, 2)

        def forward(self, x):
            h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
            return self.out(torch.relu(self.c(h)))

    def failing(graph, node):
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(index_mapping, "update_concat_index_mapping", failing)
    p = removal_problems(Cat(), ["a", "b", "c"], X)
    assert kinds(p) == {"a": removable.UNTRACED, "b": removable.UNTRACED}
    assert "ZeroDivisionError" in p["a"]
