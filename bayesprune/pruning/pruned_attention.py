"""An attention layer with only some of its heads: what ``extract`` puts in place of an
``nn.MultiheadAttention`` whose heads were pruned.

:class:`PrunedMultiheadAttention` keeps ``k`` of the ``H`` heads of a self-attention
layer with a packed in-projection: an in-projection ``E -> 3·k·d`` (the query, key and
value rows of the kept heads, with their biases) and an out-projection ``k·d -> E``
(the kept heads' columns, with the whole output bias), ``d`` the head dimension. It is
called like ``nn.MultiheadAttention`` and returns what it returns, ``(output, weights or
None)``; it uses :func:`torch.nn.functional.scaled_dot_product_attention` when the
weights are not needed.

Differences from ``nn.MultiheadAttention``, all following from the removed heads:

- the attention weights (``need_weights=True``) are those of the kept heads only:
  ``(N, k, L, S)`` per head, or their mean over the ``k`` kept heads;
- a per-head ``attn_mask`` of shape ``(N·H, L, S)`` is given for all ``H`` original
  heads, as to the original layer; the rows of the kept heads are used (``heads``, a
  buffer, holds their original indices);
- with no head kept, the output is the out-projection's bias (zeros without a bias) at
  every position -- what the original layer computes with every head's output at 0 --
  and the weights are ``None``;
- no fused "fast path": ``_qkv_same_embed_dim`` is ``False``, so
  ``nn.TransformerEncoderLayer`` does not hand the layer's tensors to its fused kernel
  (which assumes ``H·d = E``) and runs its ordinary path, which calls this module.

>>> import torch, torch.nn as nn
>>> mha = nn.MultiheadAttention(8, 4, batch_first=True).eval()
>>> with torch.no_grad():
...     _ = mha.out_proj.weight[:, 2:4].zero_()  # head 1 contributes nothing
>>> small = PrunedMultiheadAttention.from_attention(mha, [0, 2, 3]).eval()
>>> x = torch.randn(2, 5, 8)
>>> torch.allclose(small(x, x, x)[0], mha(x, x, x)[0], atol=1e-6), small.heads.tolist()
(True, [0, 2, 3])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.heads import check_head_layer

__all__ = ["PrunedMultiheadAttention"]


class _OutProjection(nn.Linear):
    """The out-projection: a Linear the attention layer reads as tensors (never calls).
    Not initialised here: :class:`PrunedMultiheadAttention` initialises it (or copies the
    original layer's values in), which also works for zero kept heads."""

    def reset_parameters(self) -> None:
        pass


class PrunedMultiheadAttention(nn.Module):
    """Multi-head self-attention with ``len(heads)`` of an original layer's heads.

    :param embed_dim: the model dimension ``E`` (inputs and outputs).
    :param heads: the original indices of the kept heads (may be empty).
    :param head_dim: features per head ``d``.
    :param bias: whether the projections have biases.
    :param dropout: dropout on the attention weights (training mode only).
    :param batch_first: inputs and outputs are ``(N, L, E)`` (else ``(L, N, E)``).

    Parameters (as ``nn.MultiheadAttention`` names them): ``in_proj_weight``
    ``(3·k·d, E)`` (the kept heads' query rows, then key rows, then value rows),
    ``in_proj_bias`` ``(3·k·d,)``, ``out_proj.weight`` ``(E, k·d)``, ``out_proj.bias``.

    >>> attn = PrunedMultiheadAttention(8, [1, 3], 2, batch_first=True)
    >>> out, w = attn(torch.randn(3, 5, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8))
    >>> tuple(out.shape), tuple(w.shape), tuple(attn.in_proj_weight.shape)
    ((3, 5, 8), (3, 5, 5), (12, 8))
    """

    #: counted by :func:`bayesprune.metrics.count_flops` as an attention layer
    counts_as_attention = True
    #: read by ``nn.TransformerEncoderLayer``/``nn.TransformerEncoder`` to decide on their
    #: fused fast path, which needs ``num_heads · head_dim == embed_dim``: never take it
    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        heads: Sequence[int],
        head_dim: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kept = [int(h) for h in heads]
        if len(set(kept)) != len(kept) or any(h < 0 for h in kept):
            raise ConfigError(
                f"PrunedMultiheadAttention: heads must be distinct indices >= 0, got {kept}"
            )
        if embed_dim < 1 or head_dim < 1:
            raise ConfigError(
                "PrunedMultiheadAttention: embed_dim and head_dim must be >= 1, got "
                f"{embed_dim} and {head_dim}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"PrunedMultiheadAttention: dropout must be in [0, 1), got {dropout}")
        self.embed_dim = int(embed_dim)
        self.head_dim = int(head_dim)
        self.num_heads = len(kept)
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        inner = self.num_heads * self.head_dim
        kw = {"device": device, "dtype": dtype}
        self.register_buffer("heads", torch.tensor(sorted(kept), dtype=torch.long, device=device))
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, self.embed_dim, **kw))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * inner, **kw))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = _OutProjection(inner, self.embed_dim, bias=bias, **kw)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random projections (Xavier-uniform), zero biases; nothing to do for zero heads."""
        with torch.no_grad():
            for w in (self.in_proj_weight, self.out_proj.weight):
                if w.numel():
                    nn.init.xavier_uniform_(w)
            for b in (self.in_proj_bias, self.out_proj.bias):
                if b is not None:
                    b.zero_()

    @classmethod
    @torch.no_grad()
    def from_attention(
        cls, layer: nn.MultiheadAttention, heads: Sequence[int]
    ) -> PrunedMultiheadAttention:
        """The heads ``heads`` of ``layer`` (their current values), in a new module.

        :raises UnsupportedError: for an attention layer whose heads cannot be separated
            (:func:`~bayesprune.heads.check_head_layer`).
        :raises ConfigError: for a head index out of range.
        """
        check_head_layer("PrunedMultiheadAttention", type(layer).__name__, layer)
        kept = sorted({int(h) for h in heads})
        if kept and (kept[0] < 0 or kept[-1] >= layer.num_heads):
            raise ConfigError(
                f"PrunedMultiheadAttention: heads {kept} out of range for {layer.num_heads} heads"
            )
        w = layer.in_proj_weight
        new = cls(
            layer.embed_dim,
            kept,
            layer.head_dim,
            bias=layer.in_proj_bias is not None,
            dropout=layer.dropout,
            batch_first=layer.batch_first,
            device=w.device,
            dtype=w.dtype,
        )
        e, d = layer.embed_dim, layer.head_dim
        cols = (
            (torch.tensor(kept, dtype=torch.long, device=w.device)[:, None] * d)
            .add(torch.arange(d, device=w.device))
            .flatten()
        )
        rows = torch.cat([cols, cols + e, cols + 2 * e])
        new.in_proj_weight.copy_(w[rows])
        if layer.in_proj_bias is not None:
            new.in_proj_bias.copy_(layer.in_proj_bias[rows])
        new.out_proj.weight.copy_(layer.out_proj.weight[:, cols])
        if layer.out_proj.bias is not None:
            new.out_proj.bias.copy_(layer.out_proj.bias)
        new.train(layer.training)
        return new

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """As ``nn.MultiheadAttention.forward`` (see the module docstring for the weights).

        Boolean masks are ``True`` where attention is *not* allowed; float masks are added
        to the scores. ``is_causal`` is a hint that ``attn_mask`` is the causal mask, which
        must then be given (as for ``nn.MultiheadAttention``).
        """
        if is_causal and attn_mask is None:
            raise ConfigError(
                "PrunedMultiheadAttention: is_causal=True is a hint about attn_mask; pass the "
                "causal attn_mask too"
            )
        batched = query.dim() == 3
        if query.dim() not in (2, 3):
            raise UnsupportedError(
                f"PrunedMultiheadAttention: query must be 2-D (unbatched) or 3-D, got "
                f"shape {tuple(query.shape)}"
            )
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length = query.shape[0], query.shape[1]
        if self.num_heads == 0:
            out = query.new_zeros(n, length, self.embed_dim)
            if self.out_proj.bias is not None:
                out = out + self.out_proj.bias
            return self._layout(out, batched), None
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._split(F.linear(query, w_q, b_q))
        k = self._split(F.linear(key, w_k, b_k))
        v = self._split(F.linear(value, w_v, b_v))
        mask = self._mask(attn_mask, key_padding_mask, n, q)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = torch.matmul(q * (1.0 / math.sqrt(self.head_dim)), k.transpose(-2, -1))
            if mask is not None:
                scores = scores + mask
            weights = torch.softmax(scores, dim=-1)
            if p > 0:
                weights = F.dropout(weights, p=p)
            heads_out = torch.matmul(weights, v)
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            heads_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        merged = heads_out.transpose(1, 2).reshape(n, length, self.num_heads * self.head_dim)
        out = F.linear(merged, self.out_proj.weight, self.out_proj.bias)
        return self._layout(out, batched), weights

    def _split(self, t: Tensor) -> Tensor:
        """``(N, L, k·d) -> (N, k, L, d)``."""
        n, length, _ = t.shape
        return t.view(n, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _layout(self, out: Tensor, batched: bool) -> Tensor:
        if not batched:
            return out.squeeze(0)
        return out if self.batch_first else out.transpose(0, 1)

    def _mask(
        self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, n: int, q: Tensor
    ) -> Tensor | None:
        """One additive float mask, broadcastable to ``(N, k, L, S)``, or ``None``."""
        mask = None
        if attn_mask is not None:
            m = _additive(attn_mask, q.dtype)
            if m.dim() == 2:
                m = m[None, None]
            elif m.dim() == 3:
                if m.shape[0] % n:
                    raise ConfigError(
                        f"PrunedMultiheadAttention: a 3-D attn_mask has shape "
                        f"{tuple(m.shape)}; expected (batch * num_heads, L, S) with batch {n}"
                    )
                total = m.shape[0] // n
                if self.heads.numel() and int(self.heads.max()) >= total:
                    raise ConfigError(
                        f"PrunedMultiheadAttention: a 3-D attn_mask for {total} heads, but "
                        f"this layer keeps original heads {self.heads.tolist()}"
                    )
                m = m.view(n, total, *m.shape[1:]).index_select(1, self.heads)
            else:
                raise UnsupportedError(
                    f"PrunedMultiheadAttention: attn_mask must be 2-D or 3-D, got {m.dim()}-D"
                )
            mask = m
        if key_padding_mask is not None:
            kpm = _additive(key_padding_mask, q.dtype)[:, None, None, :]
            mask = kpm if mask is None else mask + kpm
        return mask

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, heads={self.heads.tolist()}, head_dim={self.head_dim}, "
            f"bias={self.in_proj_bias is not None}, batch_first={self.batch_first}"
        )


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (``True``: not allowed) as ``-inf``/0, a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf")
        )
    if not mask.is_floating_point():
        raise UnsupportedError(
            f"PrunedMultiheadAttention: masks must be bool or floating point, got {mask.dtype}"
        )
    return mask.to(dtype)
