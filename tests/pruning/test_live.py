"""Live removal of units: the smaller network computes what the larger one computed with
the removed units' gates closed, gradients and optimizer steps are the survivors' slices
of the larger model's, per-unit facts follow the units, bad keep maps change nothing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bayesprune import collapse, extract, sparsify
from bayesprune.guides import MAP, MeanField
from bayesprune.guides.base import key
from bayesprune.inference import FusedELBO
from bayesprune.priors import HALO, UnitGates
from bayesprune.pruning.live import original_sites, remove_units, removed_units, to_current
from bayesprune.zoo import build


# --- networks and where each tensor's dimensions come from --------------------------------
def lenet300() -> nn.Module:
    return build("lenet300", in_features=16, hidden=(12, 10), n_classes=3)


def lenet5() -> nn.Module:
    return build("lenet5", width=0.25, n_classes=3)  # conv 5, 12 (4x4 maps), fc 125


class ConvBN(nn.Module):
    """conv-BN-relu twice, max-pool, flatten, fc; on (1, 4, 4) inputs."""

    def __init__(self) -> None:
        super().__init__()
        # no conv biases before BatchNorm: their gradient is 0 up to rounding, which Adam
        # would blow up to full steps in random directions
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


class Residual(nn.Module):
    """stem -> one basic block with an identity shortcut -> fc; on (1, 4, 4) inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.bn(self.stem(x)))
        h = F.relu(self.bn_a(self.conv_a(s)))
        return self.fc(F.relu(self.bn_b(self.conv_b(h)) + s).flatten(1))


def _bn(layer: str) -> dict[str, tuple]:
    return {f"{layer}.{p}": (layer,) for p in ("weight", "bias", "running_mean", "running_var")}


# parameter -> per dimension: None (whole), a layer (its units), or (layer, r) (r entries each)
CASES = {
    "lenet300": (
        lenet300,
        (16,),
        {
            "fc1.weight": ("fc1", None),
            "fc1.bias": ("fc1",),
            "fc2.weight": ("fc2", "fc1"),
            "fc2.bias": ("fc2",),
            "fc3.weight": (None, "fc2"),
            "fc3.bias": (None,),
        },
    ),
    "lenet5": (
        lenet5,
        (1, 28, 28),
        {
            "conv1.weight": ("conv1", None, None, None),
            "conv1.bias": ("conv1",),
            "conv2.weight": ("conv2", "conv1", None, None),
            "conv2.bias": ("conv2",),
            "fc1.weight": ("fc1", ("conv2", 16)),
            "fc1.bias": ("fc1",),
            "fc2.weight": (None, "fc1"),
            "fc2.bias": (None,),
        },
    ),
    "convbn": (
        ConvBN,
        (1, 4, 4),
        {
            "conv1.weight": ("conv1", None, None, None),
            **_bn("bn1"),
            "conv2.weight": ("conv2", "conv1", None, None),
            **_bn("bn2"),
            "fc.weight": (None, ("conv2", 4)),
            "fc.bias": (None,),
        },
    ),
}
# BatchNorm channels are the units of the conv before them
BN_OF = {"bn1": "conv1", "bn2": "conv2"}


def _take(t: torch.Tensor, layout: tuple, kept: dict[str, torch.Tensor]) -> torch.Tensor:
    for d, spec in enumerate(layout):
        if spec is None:
            continue
        layer, rep = (spec, 1) if isinstance(spec, str) else spec
        layer = BN_OF.get(layer, layer)
        idx = (kept[layer][:, None] * rep + torch.arange(rep)).flatten()
        t = t.index_select(d, idx.to(t.device))
    return t


def _layout_of(name: str, layouts: dict[str, tuple]) -> tuple:
    """Layout of a guide parameter (``loc.fc1/weight``, ``gate_probs.fc1/gate``, ...) or of a
    module tensor (``fc1.bias``)."""
    if name in layouts:
        return layouts[name]
    site = name.split(".", 1)[1].replace("/", ".")
    layer, attr = site.rsplit(".", 1)
    if attr == "gate":
        return (layer,)
    return layouts[f"{layer}.weight"]


def _setup(case: str, guide: str = "map", weight_prior=None, seed: int = 0):
    factory, shape, layouts = CASES[case]
    torch.manual_seed(seed)
    module = factory()
    for m in module.modules():  # non-trivial BatchNorm statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight, 1.0, 0.3)
            nn.init.normal_(m.bias, 0.0, 0.3)
    x = torch.randn(6, *shape)
    prior = UnitGates(gamma=2.0, weight_prior=weight_prior)
    net = sparsify(module, prior, example_input=x[:1])
    g = MAP(net) if guide == "map" else MeanField(net, init_scale=0.05)
    if guide == "mean_field":
        with torch.no_grad():
            for p in g.rho.values():
                p.add_(torch.randn_like(p) * 0.3)
    keep = {}
    for s in net.gates:
        n = s.shape[0]
        keep[s.layer] = torch.randperm(n)[: max(1, n - n // 3)].sort().values
    _close_gates(net, g, keep)
    return net, g, x, keep, layouts


@torch.no_grad()
def _close_gates(net, guide, keep: dict[str, torch.Tensor]) -> None:
    """θ = 1 for kept units and 0 for the others: the gates' draws are then deterministic."""
    for s in net.gates:
        theta = torch.zeros(s.shape)
        theta[keep[s.layer]] = 1.0
        guide.gate_probs[key(s.name)].copy_(theta)


def _fixed_noise(monkeypatch, noises: list[torch.Tensor]) -> None:
    """Mean-field draws ``loc + eps * scale`` with the given ``eps``, in site order."""
    queue = list(noises)
    monkeypatch.setattr(MeanField, "noise", lambda self, loc: queue.pop(0).to(loc))


def _noise(guide, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(p.shape, generator=g) for k, p in getattr(guide, "loc", {}).items()}


def _grads(net, guide) -> dict[str, torch.Tensor]:
    out = {f"guide.{n}": p.grad for n, p in guide.named_parameters() if p.grad is not None}
    out.update(
        {f"module.{n}": p.grad for n, p in net.deterministic_parameters() if p.grad is not None}
    )
    return out


def _state(net, guide) -> dict[str, torch.Tensor]:
    out = {f"guide.{n}": t for n, t in guide.state_dict().items()}
    out.update({f"module.{n}": t for n, t in net.module.state_dict().items()})
    return out


def _check_slices(before: dict, after: dict, layouts: dict, kept: dict, **tol) -> None:
    assert before.keys() == after.keys()
    for name, b in before.items():
        inner = name.split(".", 1)[1]
        if b.dim() == 0:  # a counter (BatchNorm's num_batches_tracked): nothing to slice
            continue
        expected = _take(b, _layout_of(inner, layouts), kept)
        torch.testing.assert_close(after[name], expected, msg=name, **tol)


# --- the smaller network computes the same ------------------------------------------------
@pytest.mark.parametrize("guide", ["map", "mean_field"])
@pytest.mark.parametrize("case", list(CASES))
def test_output_and_gradients_are_the_survivors_slices(case, guide, monkeypatch):
    net, g, x, keep, layouts = _setup(case, guide)
    ref_net, ref_guide, *_ = _setup(case, guide)  # the same again (deepcopy breaks sites'
    y = torch.randint(0, 3, (x.shape[0],))  # `support is constraints.real` identities)
    widths = {s.layer: s.shape[0] for s in net.gates}

    for m in (ref_net.module, net.module):  # training forwards below leave the stats alone
        for bn in m.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.momentum = 0.0
    state_before = {k: v.clone() for k, v in _state(ref_net, ref_guide).items()}
    out_before = ref_net.predict(ref_guide.point(), x)
    noise = _noise(ref_guide)
    _fixed_noise(monkeypatch, 2 * list(noise.values()))
    FusedELBO()(ref_net, ref_guide, x, y, n_data=60).backward()  # BatchNorm in training mode
    grads_before = _grads(ref_net, ref_guide)
    FusedELBO()(net, g, x, y, n_data=60).backward()

    kept = remove_units(net, g, keep)
    _check_slices(grads_before, _grads(net, g), layouts, keep, rtol=0, atol=0)  # sliced along
    g.zero_grad(set_to_none=True)
    net.zero_grad(set_to_none=True)
    assert kept.keys() == keep.keys()
    for layer, units in keep.items():
        assert torch.equal(kept[layer], units)
        assert net.module.get_submodule(layer).weight.shape[0] == len(units) < widths[layer]
    assert [(s.name, s.shape) for s in g.sites] == [(s.name, s.shape) for s in net.sites]
    for s in net.sites:
        for p in g.site_parameters(s):
            assert tuple(p.shape) == s.shape, s.name

    _check_slices(state_before, _state(net, g), layouts, keep, rtol=0, atol=0)
    torch.testing.assert_close(net.predict(g.point(), x), out_before)

    sliced = [_take(e, _layout_of(f"loc.{k}", layouts), keep) for k, e in noise.items()]
    _fixed_noise(monkeypatch, sliced)
    FusedELBO()(net, g, x, y, n_data=60).backward()
    _check_slices(grads_before, _grads(net, g), layouts, keep, rtol=1e-4, atol=1e-5)


def test_coupled_units_go_only_where_every_coupled_layer_drops_them():
    torch.manual_seed(0)
    x = torch.randn(5, 1, 4, 4)
    net = sparsify(Residual(), UnitGates(gamma=1.0), example_input=x[:1])
    g = MAP(net)
    assert set(net.layer_names) == {"stem", "conv_a", "conv_b"}
    # stem and conv_b feed one sum: dropping unit 1 of the stem alone removes nothing
    assert remove_units(net, g, {"stem": [0, 2, 3]}) == {}
    assert net.module.stem.out_channels == 4 and original_sites(net) == net.sites
    keep = {"stem": torch.tensor([0, 2, 3]), "conv_b": torch.tensor([0, 2, 3])}
    _close_gates(net, g, {**keep, "conv_a": torch.arange(4)})
    before = net.predict(g.point(), x)
    kept = remove_units(net, g, keep)
    assert {n: k.tolist() for n, k in kept.items()} == {"stem": [0, 2, 3], "conv_b": [0, 2, 3]}
    m = net.module
    assert (m.stem.out_channels, m.bn.num_features, m.conv_a.in_channels) == (3, 3, 3)
    assert (m.conv_b.out_channels, m.bn_b.num_features, m.fc.in_features) == (3, 3, 48)
    assert m.conv_a.out_channels == 4
    torch.testing.assert_close(net.predict(g.point(), x), before)


def test_adam_sgd_state_is_sliced_so_the_next_step_matches():
    for case in ("lenet300", "convbn"):
        for make in (
            lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
            lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
            lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9),
        ):
            y = torch.randint(0, 3, (6,))
            pairs = []
            for _ in range(2):  # the model to cut and its reference, trained alike
                net, g, x, keep, layouts = _setup(case)
                opt = make([{"params": list(g.parameters())}, {"params": det_params(net)}])
                for _ in range(3):  # build up optimizer state on the whole network
                    _close_gates(net, g, keep)
                    opt.zero_grad()
                    FusedELBO()(net, g, x, y, n_data=60).backward()
                    opt.step()
                    g.project_()
                _close_gates(net, g, keep)
                pairs.append((net, g, opt))
            (net, g, opt), (ref_net, ref_guide, ref_opt) = pairs
            det = det_params(net)

            ref_opt.zero_grad()
            FusedELBO()(ref_net, ref_guide, x, y, n_data=60).backward()
            ref_opt.step()

            remove_units(net, g, keep, opt)
            live = {id(p) for group in opt.param_groups for p in group["params"]}
            assert live == {id(p) for p in [*g.parameters(), *det_params(net)]}
            assert not any(p is q for p in det for q in det_params(net)[:2])  # fc1's: new
            for group in opt.param_groups:
                for p in group["params"]:
                    for v in opt.state[p].values():
                        assert v.dim() == 0 or v.shape == p.shape
            opt.zero_grad()
            FusedELBO()(net, g, x, y, n_data=60).backward()
            opt.step()
            _check_slices(
                _state(ref_net, ref_guide), _state(net, g), layouts, keep, rtol=1e-5, atol=1e-6
            )


def det_params(net) -> list[nn.Parameter]:
    return [p for _, p in net.deterministic_parameters()]


# --- sites, records, composition -----------------------------------------------------------
def test_sites_are_rebuilt_with_per_unit_prices_sliced_and_fan_in_recomputed():
    x = torch.randn(2, 1, 28, 28)
    prior = UnitGates(gamma=3.0, cost="flops", weight_prior=HALO(per="unit"))
    net = sparsify(lenet5(), prior, example_input=x[:1])
    g = MeanField(net)
    old = {s.name: s for s in net.sites}
    keep = {"conv2": torch.tensor([1, 4, 5, 9])}
    remove_units(net, g, keep)
    gate = net.site("conv2.gate")
    assert gate.shape == (4,) and net.site("conv2.gate_prob").shape == (4,)
    assert gate.meta["gamma"] == tuple(old["conv2.gate"].meta["gamma"][i] for i in (1, 4, 5, 9))
    assert net.site("conv2.weight_scale").shape == (4,)
    assert net.site("conv2.weight").shape == (4, 5, 5, 5)
    assert net.site("fc1.weight").shape == (125, 64)
    assert net.site("fc1.weight_scale").meta["shared"] == 64  # the new fan-in
    assert net.site("conv1.gate") is old["conv1.gate"]  # untouched layers keep their sites
    assert net.replacing == tuple(s for s in net.sites if s.replaces is not None)
    assert net.gates == tuple(s for s in net.sites if s.role == "gate")
    assert g.sites == net.sites  # both read from net.layer_sites
    assert original_sites(net) == tuple(old.values())


def test_repeated_removals_compose_in_original_indexing():
    net, g, x, _, _ = _setup("lenet300")
    remove_units(net, g, {"fc1": [0, 2, 3, 5, 7, 8, 11]})
    kept = remove_units(net, g, {"fc1": [1, 2, 6], "fc2": [0, 9]})
    assert {n: k.tolist() for n, k in kept.items()} == {"fc1": [2, 3, 11], "fc2": [0, 9]}
    assert {n: k.tolist() for n, k in removed_units(net).items()} == kept_lists(kept)
    assert {n: k.tolist() for n, k in to_current(net, {"fc1": [3, 11]}).items()} == {"fc1": [1, 2]}
    with pytest.raises(ValueError, match=r"'fc1'.*\[5\].*already removed"):
        to_current(net, {"fc1": [5]})


def kept_lists(kept):
    return {n: k.tolist() for n, k in kept.items()}


def test_collapse_and_extract_work_after_live_removal():
    net, g, x, keep, _ = _setup("convbn", "mean_field")
    remove_units(net, g, keep)
    ks = collapse(net, g)  # keeps θ > 0.5: every unit left
    assert ks["conv2"].n_units == len(keep["conv2"]) == ks["conv2"].n_kept
    small = extract(net, ks)
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), net.predict(g.point(), x))


# --- bad keep maps change nothing ----------------------------------------------------------
@pytest.mark.parametrize(
    ("keep", "error", "match"),
    [
        ({"nope": [0]}, ValueError, "unknown layer 'nope'"),
        ({"fc3": [0]}, ValueError, "unknown layer 'fc3'"),  # no sites: the output layer
        ({"fc1": [0, 12]}, ValueError, r"out of range \[0, 12\) of layer 'fc1'.*\[12\]"),
        ({"fc2": [-1]}, ValueError, "out of range.*'fc2'"),
        ({"fc1": []}, ValueError, "keeps none of the 12 units of layer 'fc1'"),
        ({"fc1": [0.0, 1.0]}, TypeError, r"keep\['fc1'\] must hold integer"),
        ({"fc1": torch.ones(12, dtype=torch.bool)}, TypeError, "nonzero"),
    ],
)
def test_bad_keep_maps_raise_and_change_nothing(keep, error, match):
    net, g, _, _, _ = _setup("lenet300")
    det = [p for _, p in net.deterministic_parameters()]
    opt = torch.optim.Adam([*g.parameters(), *det], fused=True)
    sites, params = net.sites, [*net.parameters(), *g.parameters()]
    before = copy.deepcopy((net.state_dict(), g.state_dict()))
    with pytest.raises(error, match=match):
        remove_units(net, g, keep, opt)
    for a, b in zip((net.state_dict(), g.state_dict()), before, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(a is b for a, b in zip(net.sites, sites, strict=True))
    assert g.sites == sites and removed_units(net) == {}
    assert all(p is q for p, q in zip([*net.parameters(), *g.parameters()], params, strict=True))
    assert [p for group in opt.param_groups for p in group["params"]] == [*g.parameters(), *det]


def test_units_that_reach_the_output_or_a_layer_without_sites_are_refused():
    x = torch.randn(2, 16)
    # sparsify refuses to gate the output layer when it has an example input
    # (tests/nn/test_removable.py); without one, the removal must refuse it
    module = lenet300()
    module.example_input = None  # hides the zoo network's own
    net = sparsify(module, UnitGates(), layers=["fc1", "fc3"])
    net.example_input = x
    g = MAP(net)
    with pytest.raises(ValueError, match="units of layer 'fc3' reach the network's output"):
        remove_units(net, g, {"fc3": [0, 1]})
    net = sparsify(
        Residual(), UnitGates(), layers=["conv_b"], example_input=torch.zeros(1, 1, 4, 4)
    )
    with pytest.raises(ValueError, match="output channels of 'stem'.*no sites"):
        remove_units(net, MAP(net), {"conv_b": [0, 1]})
    assert net.module.conv_b.out_channels == 4 and net.module.stem.out_channels == 4


def test_no_example_input_and_foreign_guide():
    net = sparsify(lenet300(), UnitGates())
    net.example_input = None
    with pytest.raises(ValueError, match="example input"):
        remove_units(net, MAP(net), {"fc1": [0]})
    other = sparsify(build("lenet300", in_features=16, hidden=(11, 10), n_classes=3), UnitGates())
    with pytest.raises(ValueError, match="other sites"):
        remove_units(net, MAP(other), {"fc1": [0]})


def test_a_guide_left_out_of_a_removal_no_longer_matches_its_net():
    net, g, _, _, _ = _setup("lenet300")
    stale = MAP(net)
    remove_units(net, g, {"fc1": [0, 1, 2]})
    with pytest.raises(ValueError, match="guide does not match net"):
        remove_units(net, stale, {"fc1": [0]})
