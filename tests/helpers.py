"""Helpers shared by several test files (import them: ``from tests.helpers import run_main``)."""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import re
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
import torch.nn as nn
from torch import Tensor

#: the [network] and [data] sections of a tiny CLI spec: LeNet-300-100 at width 0.1 on
#: 64 synthetic 28x28 images (append [prior], [guide], [fit], [collapse])
TINY_SPEC_HEAD = """\
[network]
name = "lenet300"
width = 0.1              # 784-30-10-10

[data]
name = "synthetic"
n_train = 64
n_val = 16
n_test = 32
input_shape = [1, 28, 28]
n_classes = 10
"""


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """Run the ``bayesprune`` CLI in-process: ``(exit code, stdout, stderr)``."""
    from bayesprune.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def mlp(*widths: int) -> nn.Sequential:
    """Linear layers of the given widths with a ReLU after every one but the last (default
    8-16-3: layers ``"0"`` and ``"2"``).

    >>> [m.out_features for m in mlp(4, 6, 5, 3) if isinstance(m, nn.Linear)]
    [6, 5, 3]
    """
    widths = widths or (8, 16, 3)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def n_params(module: nn.Module) -> int:
    """Every parameter element of ``module``."""
    return sum(p.numel() for p in module.parameters())


def set_gates(guide, thetas: dict[str, list[float]]) -> None:
    """Put the gate probabilities θ of a gate guide at ``thetas`` (by layer name), in the
    dtype of the guide's parameters."""
    from bayesprune.guides.base import key

    with torch.no_grad():
        for layer, theta in thetas.items():
            p = guide.gate_probs[key(f"{layer}.gate")]
            p.copy_(torch.tensor(theta, dtype=p.dtype))


def configurations(sizes: list[int]) -> Iterator[list[Tensor]]:
    """Every joint 0/1 value of gates with the given sizes, one float64 tensor per gate.

    >>> [[z.tolist() for z in zs] for zs in configurations([1, 1])]
    [[[0.0], [0.0]], [[0.0], [1.0]], [[1.0], [0.0]], [[1.0], [1.0]]]
    """
    for bits in itertools.product([0.0, 1.0], repeat=sum(sizes)):
        yield list(torch.split(torch.tensor(bits, dtype=torch.float64), sizes))


def configuration_weight(zs: list[Tensor], thetas: list[Tensor]) -> Tensor:
    """``q(z) = Π θ^z (1 − θ)^(1 − z)`` (float64), differentiable in θ."""
    w = torch.ones((), dtype=torch.float64)
    for z, t in zip(zs, thetas, strict=True):
        w = w * torch.where(z > 0, t, 1 - t).prod()
    return w


@contextlib.contextmanager
def forced_gates(zs: list[Tensor] | Tensor) -> Iterator[list[Tensor]]:
    """Make the ``torch.bernoulli`` calls inside -- the fused path's hard sample and Pyro's
    ``Bernoulli.sample`` alike -- return the given gate values: given a list, one value a
    call in site order (zeros once they run out); given one tensor, that tensor at every
    call. The other random draws (Normal weights) are left alone, so one seed gives both
    paths the same ``W``. Yields the list of values actually drawn."""
    queue = [] if isinstance(zs, Tensor) else list(zs)
    drawn: list[Tensor] = []

    def fake(p: Tensor, *args, **kwargs) -> Tensor:
        z = zs if isinstance(zs, Tensor) else queue.pop(0) if queue else torch.zeros_like(p)
        assert z.shape == p.shape
        drawn.append(z)
        return z.to(p)

    with mock.patch.object(torch, "bernoulli", fake):
        yield drawn


def perturb(guide, scale: float = 1.0) -> None:
    """Add ``scale`` x standard normal noise to every parameter of ``guide``."""
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(scale * torch.randn_like(p))


def go(pair, data, **kwargs):
    """``fit`` a ``(net, guide)`` pair."""
    from bayesprune import fit

    net, guide = pair
    return fit(net, data, guide, **kwargs)


def records(result) -> list[dict]:
    """A fit's history without wall-clock times."""
    return [{k: v for k, v in h.items() if k != "seconds"} for h in result.history]


def assert_same(a: dict, b: dict) -> None:
    """Equal keys and equal values: tensors equal with the same dtype, dicts recursively,
    anything else ``==``."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], Tensor):
            assert torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype, k
        elif isinstance(a[k], dict):
            assert_same(a[k], b[k])
        else:
            assert a[k] == b[k], k


def assert_same_fit(a, b) -> None:
    """Two ``fit`` results alike to the bit: guide and net state, history (times aside),
    ELBO trace and the units removed."""
    for x, y in ((a.guide, b.guide), (a.net, b.net)):
        assert_same(x.state_dict(), y.state_dict())
    assert records(a) == records(b)
    assert (a.elbo, a.elbo_steps) == (b.elbo, b.elbo_steps)
    assert {n: u.tolist() for n, u in a.removed.items()} == {
        n: u.tolist() for n, u in b.removed.items()
    }


def resnet(**kwargs) -> nn.Module:
    """The zoo's ResNet-20 at width 1/4 for 8x8 inputs (stage channels 4, 8, 16)."""
    from bayesprune.zoo import build

    return build("resnet20", width=0.25, input_size=8, **kwargs)


def mlp_bn(sizes: tuple[int, int, int, int] = (5, 6, 4, 2)) -> nn.Sequential:
    """Linear-BatchNorm-ReLU, Linear-ReLU, Linear with the given widths."""
    a, b, c, d = sizes
    return nn.Sequential(
        nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU(), nn.Linear(b, c), nn.ReLU(), nn.Linear(c, d)
    )


def randomise_batchnorm(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Running statistics and affine parameters away from their defaults (with those, BN
    maps 0 to 0 and zeroing a unit or a residual branch would go untested); scales stay in
    [0.5, 1.5], so nothing is close to 0 unless it is removed. Returns ``module``."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                    m.bias.copy_(0.2 * torch.randn(n, generator=generator))
    return module


def save_extracted(net: nn.Module, keep: dict, folder, **kwargs) -> tuple[nn.Module, dict]:
    """``extract`` a zoo network for ``(1, 28, 28)`` images to ``keep`` and ``save_pruned``
    it in ``folder`` with the network's config (``kwargs`` go to ``save_pruned``):
    ``(the extracted network in eval mode, the paths written)``."""
    from bayesprune.export.pruned_network import save_pruned
    from bayesprune.pruning import extract

    small = extract(net, keep, example_input=torch.zeros(1, 1, 28, 28)).eval()
    paths = save_pruned(
        small, folder, network_config=net.config, keep=keep, input_shape=(1, 28, 28), **kwargs
    )
    return small, paths


def assert_fused_equals_trace(
    net, guide, x: Tensor, y: Tensor, n_data: int, params: list[Tensor], *, seed: int, tol: float
) -> None:
    """The fused loss and Pyro's Trace_ELBO on the same draw (same seed): equal loss and
    equal gradients w.r.t. ``params``."""
    from bayesprune.inference import FusedELBO, TraceELBO

    out = {}
    for estimator in (FusedELBO(), TraceELBO()):
        torch.manual_seed(seed)
        loss = estimator(net, guide, x, y, n_data)
        out[estimator.name] = (loss.detach(), torch.autograd.grad(loss, params))
    torch.testing.assert_close(out["fused"][0], out["trace"][0], rtol=tol, atol=tol)
    for a, b in zip(out["fused"][1], out["trace"][1], strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


class SmallConvNet(nn.Module):
    """Conv(1→4, 3x3, same)-BatchNorm-ReLU-[Dropout]-Linear(64→3), on ``(1, 4, 4)`` inputs;
    the dropout module only where ``dropout`` is given."""

    def __init__(self, dropout: float | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        if dropout is not None:
            self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        if hasattr(self, "drop"):
            h = self.drop(h)
        return self.fc(h.flatten(1))


class BakedBatch(nn.Module):
    """Turns the batch size into a Python int, which tracing freezes."""

    def forward(self, x: Tensor) -> Tensor:
        return x * int(x.shape[0])


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_string(s: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(k: str) -> str:
    """A TOML key: bare when it can be, quoted otherwise."""
    return k if _BARE_KEY.fullmatch(k) else toml_string(k)


def toml_value(v: Any) -> str:
    """A Python value (bool, int, float incl. nan/inf, str, list, dict) as a TOML value."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise AssertionError(type(v))


def toml_document(doc: dict[str, dict[str, Any]]) -> str:
    """``{section: {key: value}}`` as a TOML document."""
    lines = []
    for section, table in doc.items():
        lines.append(f"[{toml_key(section)}]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def small_art(**overrides: Any):
    """A HyperSparse prior whose ART phases run in a few epochs on tiny synthetic data."""
    from bayesprune.priors import HyperSparse

    kw = dict(
        sparsity=0.8,
        lambda_init=1e-2,
        eta=2.0,
        warmup=2,
        window=1,
        finetune=2,
        tolerance=0.05,
        max_regularise=3,
    )
    return HyperSparse(**(kw | overrides))


def extracted_count(net, keep: dict, metric: str) -> float:
    """The size of ``extract(net, keep)`` in a budget's measure (the ``metric`` of a
    :class:`~bayesprune.budget.Budget`), counted on what ``keep`` builds, not modelled:
    ``params`` and ``flops`` (MACs per example on ``net.example_input``) of the extracted
    network; ``units`` the units (blocks) the keep-sets keep; ``weights`` the nonzero
    weights of the prior's layers in the extracted network."""
    from bayesprune.metrics import count_flops, count_parameters
    from bayesprune.pruning import extract

    if metric == "units":
        return float(
            sum(
                (0 if k.identity else 1) if k.units is None else len(k.units) for k in keep.values()
            )
        )
    small = extract(net, keep)
    if metric == "params":
        return float(count_parameters(small)["params"])
    if metric == "flops":
        return float(count_flops(small, net.example_input[:1])["macs"])
    assert metric == "weights", metric
    return float(sum(int((small.get_submodule(n).weight != 0).sum()) for n in keep))


class GroupedConvNet(nn.Module):
    """A 1x1 conv feeding a grouped conv (``groups=4``, not depthwise), each followed by a
    BatchNorm and a ReLU, then a 1x1 conv, flatten and a Linear head; ``(3, 6, 6)``
    inputs. Under unit gates ``pw`` and ``gc`` are tied across the 4 groups (2 input and 3
    output channels per group: periods 2 and 3), ``out`` is not."""

    def __init__(self, width: int = 8, out: int = 12, groups: int = 4) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.gc = nn.Conv2d(width, out, 3, padding=1, groups=groups)
        self.bn2 = nn.BatchNorm2d(out)
        self.out = nn.Conv2d(out, 5, 1)
        self.fc = nn.Linear(5 * 6 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.pw(x)))
        x = torch.relu(self.bn2(self.gc(x)))
        return self.fc(torch.relu(self.out(x)).flatten(1))


class SelfAttention(nn.Module):
    """One ``nn.MultiheadAttention`` applied to its input (``(N, L, E)``; ``(L, N, E)`` with
    ``batch_first=False``), returning its output only."""

    def __init__(self, embed_dim: int = 8, num_heads: int = 4, **kwargs: Any) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class AttnNet(nn.Module):
    """Tokens ``(N, L, E)`` -> residual self-attention (``attn``) -> ReLU(Linear) (``fc``)
    -> mean over tokens -> Linear (``out``): a head-gated and a unit-gated layer."""

    def __init__(self, embed_dim: int = 4, num_heads: int = 2, hidden: int = 2, classes: int = 3):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.fc = nn.Linear(embed_dim, hidden)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.attn(x, x, x, need_weights=False)[0]
        return self.out(torch.relu(self.fc(h)).mean(1))


def manual_attention(mha: nn.MultiheadAttention, x: Tensor, z: Tensor) -> Tensor:
    """Self-attention of ``mha`` on batch-first ``x`` written out by hand, head ``h``'s output
    multiplied by ``z[h]`` before the out-projection."""
    n, length, e = x.shape
    h, d = mha.num_heads, mha.head_dim
    q, k, v = (x @ mha.in_proj_weight.T + mha.in_proj_bias).split(e, dim=-1)
    q, k, v = (t.reshape(n, length, h, d).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    heads = (weights @ v) * z.reshape(1, h, 1, 1)
    return heads.transpose(1, 2).reshape(n, length, e) @ mha.out_proj.weight.T + mha.out_proj.bias


def small_vit(**kwargs: Any) -> nn.Module:
    """torchvision's ``VisionTransformer`` for ``(1, 28, 28)`` images, 2 blocks of 4 heads,
    width 32, MLP 64, random weights (the classifier too: torchvision zeroes it)."""
    import torchvision

    vit = torchvision.models.VisionTransformer(
        image_size=28,
        patch_size=7,
        num_layers=2,
        num_heads=4,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
        **kwargs,
    )
    vit.conv_proj = nn.Conv2d(1, 32, 7, 7)
    with torch.no_grad():
        vit.heads.head.weight.normal_(0, 0.3)
        vit.heads.head.bias.normal_(0, 0.3)
    return vit


#: the head-gated and MLP layers of :func:`small_vit` (and the zoo's ViT-tiny)
VIT_LAYERS = ["*.self_attention", "*.mlp.0"]


class GcdNet(nn.Module):
    """Two grouped convs, ``(3, h, w)`` inputs: ``g1``'s 12 units are its own outputs
    (groups=3: 4 per group) and ``g2``'s inputs (groups=2: 6 per group), tied with period
    gcd(4, 6) = 2; ``g2``'s 4 units, 2 per group, with period 2."""

    def __init__(self) -> None:
        super().__init__()
        self.g1 = nn.Conv2d(3, 12, 1, groups=3)
        self.g2 = nn.Conv2d(12, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.g2(torch.relu(self.g1(x)))).mean((2, 3)))


class CatIntoGrouped(nn.Module):
    """Two 1x1 convs concatenated into a grouped conv (groups=2): each one's units are only
    half of its input channels, so no tying of their gates keeps the groups balanced."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.gc = nn.Conv2d(8, 4, 3, groups=2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.fc(torch.relu(self.gc(h)).mean((2, 3)))
