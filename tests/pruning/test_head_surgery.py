"""Removing attention heads: PrunedMultiheadAttention against the masked layer, collapse ->
extract against the collapsed model (a plain attention layer, torchvision's ViT, a stack of
nn.TransformerEncoderLayer), costs and export of the extracted network."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import bayesprune as bp
from bayesprune.errors import ConfigError
from bayesprune.export import export_onnx, export_torchscript, load_network, save_network
from bayesprune.export.pruned_network import load_pruned, save_pruned
from bayesprune.guides import MAP
from bayesprune.metrics import count_flops, count_parameters
from bayesprune.priors import UnitGates
from bayesprune.pruning import CostModel, KeepSet, collapse, extract, masked_copy
from bayesprune.pruning.pruned_attention import PrunedMultiheadAttention
from bayesprune.zoo import build
from tests.helpers import VIT_LAYERS, SelfAttention, set_gates, small_vit

F64 = torch.float64


def masked(mha: nn.MultiheadAttention, kept: list[int]) -> nn.MultiheadAttention:
    """``mha`` with the out-projection columns of every head not in ``kept`` at 0."""
    with torch.no_grad():
        for h in range(mha.num_heads):
            if h not in kept:
                mha.out_proj.weight[:, h * mha.head_dim : (h + 1) * mha.head_dim] = 0
    return mha


# --- the module ------------------------------------------------------------------------------

N, L, S, E, H = 2, 5, 7, 12, 4
KPM = torch.tensor([[False] * 5 + [True] * 2, [False] * 7])


def masks(case: str) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "plain": {},
        "no_weights": {"need_weights": False},
        "per_head_weights": {"average_attn_weights": False},
        "bool_mask": {"attn_mask": torch.rand(L, S, generator=g) > 0.7},
        "float_per_head_mask": {"attn_mask": torch.randn(N * H, L, S, generator=g)},
        "padding": {"key_padding_mask": KPM, "need_weights": False},
        "float_padding_and_mask": {
            "key_padding_mask": KPM.to(F64) * -1e9,
            "attn_mask": torch.randn(N * H, L, S, generator=g),
        },
    }[case]


CASES = [
    "plain",
    "no_weights",
    "per_head_weights",
    "bool_mask",
    "float_per_head_mask",
    "padding",
    "float_padding_and_mask",
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("train", [True, False])
def test_pruned_attention_computes_what_the_masked_layer_computes(case, batch_first, bias, train):
    mha = masked(nn.MultiheadAttention(E, H, batch_first=batch_first, bias=bias).to(F64), [0, 3])
    small = PrunedMultiheadAttention.from_attention(mha, [0, 3])
    mha.train(train), small.train(train)
    shape_q, shape_k = ((N, L, E), (N, S, E)) if batch_first else ((L, N, E), (S, N, E))
    q, kv = torch.randn(shape_q, dtype=F64), torch.randn(shape_k, dtype=F64)
    kwargs = {
        k: (v.to(F64) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
        for k, v in masks(case).items()
    }
    with torch.no_grad():
        want, w_want = mha(q, kv, kv, **kwargs)
        got, w_got = small(q, kv, kv, **kwargs)
    torch.testing.assert_close(got, want)
    if case == "per_head_weights":
        torch.testing.assert_close(w_got, w_want[:, [0, 3]])  # the kept heads' weights
    if kwargs.get("need_weights", True):
        assert w_got.shape[1:] == (
            (L, S) if kwargs.get("average_attn_weights", True) else (2, L, S)
        )
    else:
        assert w_got is None


def test_unbatched_input_and_zero_heads():
    mha = nn.MultiheadAttention(E, H).to(F64)
    x = torch.randn(L, E, dtype=F64)
    small = PrunedMultiheadAttention.from_attention(masked(mha, [2]), [2])
    torch.testing.assert_close(small(x, x, x)[0], mha(x, x, x)[0])
    assert small(x, x, x)[1].shape == (L, L)
    none = PrunedMultiheadAttention.from_attention(masked(mha, []), [])
    out, weights = none(x, x, x)
    torch.testing.assert_close(out, mha(x, x, x)[0])  # the out-projection's bias everywhere
    torch.testing.assert_close(out, mha.out_proj.bias.expand(L, E))
    assert weights is None and none.in_proj_weight.shape == (0, E)


def test_the_causal_hint_needs_its_mask():
    small = PrunedMultiheadAttention(8, [0], 4)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ConfigError, match="is_causal"):
        small(x, x, x, is_causal=True)


def test_gradients_reach_the_kept_heads():
    mha = nn.MultiheadAttention(E, H, batch_first=True, dropout=0.5)
    small = PrunedMultiheadAttention.from_attention(mha, [1, 2])
    assert small.dropout == 0.5 and small.training
    x = torch.randn(N, L, E)
    small(x, x, x, need_weights=False)[0].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in small.parameters())


# --- collapse -> extract ------------------------------------------------------------------------


def test_collapse_keeps_heads_and_extract_equals_the_masked_copy():
    module = SelfAttention(8, 4, batch_first=True)
    net = bp.sparsify(module, UnitGates(), layers="attn")
    guide = MAP(net)
    set_gates(guide, {"attn": [0.9, 0.2, 0.7, 0.0]})
    keep = collapse(net, guide)
    assert keep["attn"].units.tolist() == [0, 2] and keep["attn"].n_units == 4
    x = torch.randn(3, 6, 8)
    collapsed = masked_copy(net, keep)
    small = extract(net, keep, example_input=x)
    assert isinstance(small.attn, PrunedMultiheadAttention) and small.attn.heads.tolist() == [0, 2]
    assert isinstance(net.module.attn, nn.MultiheadAttention)  # the user's network untouched
    for mode in ("train", "eval"):
        collapsed.train(mode == "train"), small.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(small(x), collapsed(x))
            torch.testing.assert_close(collapsed(x), net.predict(guide.point(), x))
    # every gate closed: collapse keeps one head (min_units), zeroed
    set_gates(guide, {"attn": [0.0, 0.0, 0.4, 0.0]})
    keep = collapse(net, guide)
    assert keep["attn"].units.tolist() == [2] and keep["attn"].zeroed.tolist() == [2]
    small = extract(net, keep, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(small(x), module.attn.out_proj.bias.expand(3, 6, 8))


def test_vision_transformer_heads_and_mlp_units():
    vit = small_vit()
    x = torch.randn(3, 1, 28, 28)
    net = bp.sparsify(vit, UnitGates(), layers=VIT_LAYERS, example_input=x[:1])
    blocks = "encoder.layers.encoder_layer_"
    keep = {
        f"{blocks}0.self_attention": KeepSet(units=torch.tensor([1, 2]), n_units=4),
        f"{blocks}1.self_attention": KeepSet(units=torch.tensor([3]), n_units=4),
        f"{blocks}0.mlp.0": KeepSet(units=torch.arange(0, 64, 3), n_units=64),
    }
    collapsed = masked_copy(net, keep).eval()
    small = extract(net, keep).eval()
    with torch.no_grad():
        want = collapsed(x)
        torch.testing.assert_close(small(x), want, rtol=1e-5, atol=1e-5)
        assert (want - vit.eval()(x)).abs().max() > 1e-3  # removing heads changed the output
    assert small.get_submodule(f"{blocks}0.mlp.0").out_features == 22
    # MACs: each kept head costs a quarter of its layer
    rows = {r["name"]: r["macs"] for r in count_flops(small, x[:1])["layers"]}
    dense = {r["name"]: r["macs"] for r in count_flops(vit, x[:1])["layers"]}
    for layer, k in ((f"{blocks}0.self_attention", 2), (f"{blocks}1.self_attention", 1)):
        assert rows[layer] * 4 == dense[layer] * k


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_transformer_encoder_stack_in_train_and_eval_mode():
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
    stack = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=True))
    net = bp.sparsify(stack, UnitGates(), layers=["*.self_attn", "*.linear1"])
    assert len(net.layer_names) == 4
    x = torch.randn(3, 5, 16)
    keep = {
        "0.layers.0.self_attn": KeepSet(units=torch.tensor([0, 3]), n_units=4),
        "0.layers.1.self_attn": KeepSet(units=torch.tensor([1, 2, 3]), n_units=4),
        "0.layers.1.linear1": KeepSet(units=torch.arange(10), n_units=32),
    }
    collapsed = masked_copy(net, keep, example_input=x)
    small = extract(net, keep, example_input=x)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = True
    for train in (True, False):
        collapsed.train(train), small.train(train)
        with torch.no_grad():  # eval: the collapsed stack runs torch's fused encoder kernels
            torch.testing.assert_close(small(x), collapsed(x), rtol=1e-5, atol=1e-5)
        if not train:  # a padding mask: the nested-tensor path of the dense stack
            with torch.no_grad():
                got = small[0](x, src_key_padding_mask=padding)
                want = collapsed[0](x, src_key_padding_mask=padding)
            torch.testing.assert_close(got[1:], want[1:], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[0, :3], want[0, :3], rtol=1e-5, atol=1e-5)
    assert not small[0].use_nested_tensor


def test_bad_head_keepsets_are_refused_by_name():
    module = SelfAttention(8, 4, batch_first=True)
    x = torch.randn(1, 3, 8)
    with pytest.raises(ConfigError, match="'attn' has 4 heads, its keep-set says 5"):
        extract(module, {"attn": KeepSet(units=torch.tensor([0]), n_units=5)}, example_input=x)
    with pytest.raises(ConfigError, match="'attn' has 4 heads, its keep-set keeps head 6"):
        masked_copy(module, {"attn": KeepSet(units=torch.tensor([6]))}, example_input=x)


# --- costs and export ---------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["params", "flops"])
def test_the_budget_cost_model_counts_heads_as_the_extracted_network_does(metric):
    vit = small_vit()
    x = torch.zeros(1, 1, 28, 28)
    net = bp.sparsify(vit, UnitGates(cost="mixed"), layers=VIT_LAYERS, example_input=x)
    model = CostModel(net, bp.Budget(**{metric: 0.5}))
    blocks = "encoder.layers.encoder_layer_"
    kept = {f"{blocks}0.self_attention": 1, f"{blocks}1.self_attention": 3, f"{blocks}1.mlp.0": 40}
    keep = {
        n: KeepSet(units=torch.arange(k), n_units=64 if "mlp" in n else 4) for n, k in kept.items()
    }
    small = extract(net, keep)
    counted = (
        count_parameters(small)["params"] if metric == "params" else count_flops(small, x)["macs"]
    )
    assert model.count(kept) == pytest.approx(counted)
    dense = count_parameters(vit)["params"] if metric == "params" else count_flops(vit, x)["macs"]
    assert model.dense == pytest.approx(dense)


def test_an_extracted_vit_saves_and_loads(tmp_path):
    net = build("vit-tiny", num_layers=2)
    with torch.no_grad():
        net.heads.head.weight.normal_()
    keep = {
        "encoder.layers.encoder_layer_0.self_attention": KeepSet(
            units=torch.tensor([1, 3]), n_units=4
        ),
        "encoder.layers.encoder_layer_1.mlp.0": KeepSet(units=torch.arange(50), n_units=128),
    }
    x = torch.randn(2, 1, 28, 28)
    small = extract(net, keep, example_input=x[:1]).eval()
    with torch.no_grad():
        want = small(x)
    save_network(small, tmp_path / "st", architecture={"input_shape": [1, 28, 28]})
    like = load_network(tmp_path / "st", like=build("vit-tiny", num_layers=2)).eval()
    save_pruned(
        small, tmp_path / "pruned", network_config=net.config, keep=keep, input_shape=(1, 28, 28)
    )
    torch.save(small, tmp_path / "whole.pt")
    whole = torch.load(tmp_path / "whole.pt", weights_only=False).eval()
    for back in (like, load_pruned(tmp_path / "pruned"), whole):
        attn = back.encoder.layers.encoder_layer_0.self_attention
        assert isinstance(attn, PrunedMultiheadAttention) and attn.heads.tolist() == [1, 3]
        with torch.no_grad():
            torch.testing.assert_close(back(x), want)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_a_layer_keeping_every_head_stays_and_the_network_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    module = nn.Sequential(
        SelfAttention(8, 4, batch_first=True), SelfAttention(8, 2, batch_first=True)
    )
    x = torch.randn(2, 5, 8)
    keep = {
        "0.attn": KeepSet(units=torch.tensor([0, 2]), n_units=4),
        "1.attn": KeepSet(units=torch.tensor([0, 1]), n_units=2),
    }
    small = extract(module, keep, example_input=x).eval()
    assert isinstance(small[0].attn, PrunedMultiheadAttention)
    assert type(small[1].attn) is nn.MultiheadAttention
    assert export_torchscript(small, x, tmp_path / "a.pt").exists()  # checked against eager
    # ONNX: torch cannot export nn.MultiheadAttention's fused eval kernel; the pruned layer is
    only_pruned = extract(module[:1], {"0.attn": keep["0.attn"]}, example_input=x).eval()
    assert export_onnx(only_pruned, x, tmp_path / "a.onnx").exists()  # checked with onnxruntime
