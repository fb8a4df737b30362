"""count_flops on attention layers: counted per head from the call's shapes, equal to what
FlopCounterMode counts where the products are plain matrix products."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from bayesprune.metrics import count_flops
from bayesprune.metrics.attention import attention_call_macs, is_attention
from bayesprune.pruning.pruned_attention import PrunedMultiheadAttention


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kept", [None, [1, 3], []])
def test_attention_macs_match_flop_counter_mode(batch_first, kept):
    """With ``need_weights=True`` both layers compute the scores and the weighted sum as
    plain matrix products, which FlopCounterMode counts (2 FLOPs per MAC)."""
    mha = nn.MultiheadAttention(12, 4, batch_first=batch_first).train()
    layer = mha if kept is None else PrunedMultiheadAttention.from_attention(mha, kept)
    q = torch.randn((2, 5, 12) if batch_first else (5, 2, 12))
    kv = torch.randn((2, 7, 12) if batch_first else (7, 2, 12))
    counter = FlopCounterMode(display=False)
    with counter:
        out = layer(q, kv, kv, need_weights=True)
    dense, sparse = attention_call_macs(layer, (q, kv, kv), out)
    assert dense == counter.get_total_flops() // 2 == sparse
    heads = 4 if kept is None else len(kept)
    assert dense == heads * 2 * (5 * 12 * 3 + 2 * 7 * 12 * 3 + 2 * 5 * 7 * 3 + 5 * 3 * 12)


def test_count_flops_sees_the_layer_in_its_fused_path_and_counts_zeros():
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight[:8].zero_()  # the query rows
    net = nn.Sequential(mha)
    r = count_flops(SelfAttn(mha), torch.zeros(3, 5, 8))
    row = r["layers"][0]
    assert (row["type"], row["kind"], r["macs_by_kind"]) == (
        "MultiheadAttention",
        "attention",
        {"attention": 1680},
    )
    assert r["macs"] == 1680 and r["sparse_macs"] == 1680 - 5 * 8 * 8
    assert r["functional_macs"] == 0 and "NonDynamicallyQuantizableLinear" not in r["uncounted"]
    assert is_attention(mha) and not is_attention(net)
    assert not is_attention(nn.MultiheadAttention(8, 2, kdim=4, vdim=4))


class SelfAttn(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]
