"""collapse: from a (hand-set) MAP posterior to per-layer keep-sets.

The guide's point values are written by hand, all magnitudes distinct, so every
ranking below has exactly one right answer.
"""

import math

import pytest
import torch
import torch.nn as nn
from torch.distributions import biject_to

from bayesprune import sparsify
from bayesprune.guides import MAP
from bayesprune.guides.base import key
from bayesprune.priors import HALO
from bayesprune.pruning import KeepSet, collapse, extract, layer_scores
from tests.helpers import set_gates

LAYERS = ("0", "2", "4")


def small_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


class ConvMLP(nn.Module):
    """A conv layer and two Linear layers, for per-unit (structured) scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc1 = nn.Linear(4 * 4 * 4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def set_point(guide: MAP, name: str, value: torch.Tensor) -> None:
    """Make ``guide.point()[name] == value`` (through the site's bijection)."""
    site = next(s for s in guide.sites if s.name == name)
    with torch.no_grad():
        guide.unconstrained[key(name)].copy_(biject_to(site.support).inv(value))


def distinct_values(shapes: list[tuple[int, ...]], seed: int = 0) -> list[torch.Tensor]:
    """Tensors of the given shapes holding ±(1..N)/N in random places: all |.| distinct."""
    g = torch.Generator().manual_seed(seed)
    total = sum(math.prod(s) for s in shapes)
    mags = (torch.randperm(total, generator=g) + 1).float() / total
    signs = torch.where(torch.rand(total, generator=g) < 0.5, -1.0, 1.0)
    flat = mags * signs
    out, offset = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(flat[offset : offset + n].reshape(s))
        offset += n
    return out


@pytest.fixture
def fitted():
    """A per-weight HALO net over three Linear layers and its MAP guide with set weights."""
    net = sparsify(small_mlp(), HALO(), layers=nn.Linear)
    guide = MAP(net)
    shapes = [tuple(net.module.get_submodule(n).weight.shape) for n in LAYERS]
    for n, v in zip(LAYERS, distinct_values(shapes), strict=True):
        set_point(guide, f"{n}.weight", v)
    return net, guide


def weights(guide: MAP) -> dict[str, torch.Tensor]:
    point = guide.point()
    return {n: point[f"{n}.weight"] for n in LAYERS}


def test_set_point_helper_round_trips(fitted):
    net, guide = fitted
    lam = torch.tensor([[0.5, 2.0, 3.0, 4.0, 5.0, 6.0]]).expand(5, 6).contiguous()
    set_point(guide, "0.weight_scale", lam)
    torch.testing.assert_close(guide.point()["0.weight_scale"], lam)


@pytest.mark.parametrize("keep", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_global_keep_takes_the_largest_magnitudes_across_layers(fitted, keep):
    net, guide = fitted
    ks = collapse(net, guide, keep=keep)
    w = weights(guide)
    total = sum(v.numel() for v in w.values())  # 30 + 20 + 12
    assert set(ks) == set(LAYERS)
    assert sum(k.n_kept for k in ks.values()) == round(keep * total)
    kept = torch.cat([w[n][ks[n].weight_mask].abs() for n in LAYERS])
    dropped = torch.cat([w[n][~ks[n].weight_mask].abs() for n in LAYERS])
    if dropped.numel():
        assert kept.min() > dropped.max()
    for n in LAYERS:
        assert ks[n].units is None
        assert ks[n].weight_mask.dtype == torch.bool
        assert ks[n].weight_mask.shape == w[n].shape


def test_global_keep_is_not_per_layer(fitted):
    """Make layer "4" hold the largest weights: a global ranking keeps it whole."""
    net, guide = fitted
    set_point(guide, "4.weight", torch.full((3, 4), 10.0) + torch.arange(12.0).reshape(3, 4))
    ks = collapse(net, guide, keep=12 / 62)
    assert ks["4"].n_kept == 12
    assert ks["0"].n_kept == ks["2"].n_kept == 0


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.75])
def test_layer_scope_keeps_the_fraction_in_each_layer(fitted, keep):
    net, guide = fitted
    ks = collapse(net, guide, keep=keep, scope="layer")
    for n, v in weights(guide).items():
        mask = ks[n].weight_mask
        assert ks[n].n_kept == round(keep * v.numel())
        if (~mask).any():
            assert v[mask].abs().min() > v[~mask].abs().max()


@pytest.mark.parametrize("threshold", [0.0, 0.25, 0.5, 0.99, 2.0])
def test_threshold_keeps_scores_above_it(fitted, threshold):
    net, guide = fitted
    ks = collapse(net, guide, threshold=threshold)
    for n, v in weights(guide).items():
        torch.testing.assert_close(ks[n].weight_mask, v.abs() > threshold)


def test_default_threshold_is_the_priors_report_tol(fitted):
    net, guide = fitted
    w = weights(guide)["2"].clone()
    w[0, :3] = 0.0
    w[1, 0] = 0.5 * net.prior.report_tol
    set_point(guide, "2.weight", w)
    ks = collapse(net, guide)  # neither keep nor threshold
    torch.testing.assert_close(ks["2"].weight_mask, w.abs() > net.prior.report_tol)
    assert ks["2"].n_kept == w.numel() - 4
    assert ks["0"].n_kept == 30  # all of 1/62 .. 62/62 are above 1e-3


def test_by_scale_ranks_by_the_shrinkage_scale(fitted):
    net, guide = fitted
    lam = distinct_values([(5, 6), (4, 5), (3, 4)], seed=1)
    for n, v in zip(LAYERS, lam, strict=True):
        set_point(guide, f"{n}.weight_scale", v.abs())
    ks = collapse(net, guide, keep=0.25, by="scale")
    kept = torch.cat([lam[i].abs()[ks[n].weight_mask] for i, n in enumerate(LAYERS)])
    dropped = torch.cat([lam[i].abs()[~ks[n].weight_mask] for i, n in enumerate(LAYERS)])
    assert kept.numel() == round(0.25 * 62)
    assert kept.min() > dropped.max()
    # and differs from ranking by magnitude (weights and scales were drawn independently)
    by_mag = collapse(net, guide, keep=0.25)
    assert any(not torch.equal(by_mag[n].weight_mask, ks[n].weight_mask) for n in LAYERS)


def test_values_are_the_guides_point_weights(fitted):
    net, guide = fitted
    ks = collapse(net, guide, keep=0.5)
    point = guide.point()
    for n in LAYERS:
        assert set(ks[n].values) == {"weight"}
        assert torch.equal(ks[n].values["weight"], point[f"{n}.weight"])
        assert not ks[n].values["weight"].requires_grad


def test_point_can_replace_the_guide(fitted):
    net, guide = fitted
    a = collapse(net, guide, keep=0.3)
    b = collapse(net, point=guide.point(), keep=0.3)
    for n in LAYERS:
        assert torch.equal(a[n].weight_mask, b[n].weight_mask)


def test_keep_everything_and_extract_reproduces_the_posterior_point(fitted):
    """keep=1 masks nothing: the extracted net is the network at the guide's point."""
    net, guide = fitted
    x = torch.randn(7, 6)
    small = extract(net, collapse(net, guide, keep=1.0)).eval()
    torch.testing.assert_close(small(x), net.predict(guide.point(), x))


# --- structured (per-unit HALO) ----------------------------------------------------------


@pytest.fixture
def fitted_units():
    net = sparsify(ConvMLP(), HALO(per="unit"), layers=["conv", "fc1"])
    guide = MAP(net)
    # unit norms: conv units 1, 2, 3, 4 (scaled rows), fc1 units 0.5, 1.5, ..., 5.5
    conv = torch.ones(4, 1, 3, 3) / 3.0 * torch.tensor([3.0, 1.0, 4.0, 2.0]).view(4, 1, 1, 1)
    fc1 = torch.ones(6, 64) / 8.0 * torch.tensor([0.5, 5.5, 1.5, 4.5, 2.5, 3.5]).view(6, 1)
    set_point(guide, "conv.weight", conv)
    set_point(guide, "fc1.weight", fc1)
    return net, guide


def test_unit_scores_are_row_norms(fitted_units):
    net, guide = fitted_units
    scores = layer_scores(net, guide.point())
    torch.testing.assert_close(scores["conv"], torch.tensor([3.0, 1.0, 4.0, 2.0]))
    torch.testing.assert_close(scores["fc1"], torch.tensor([0.5, 5.5, 1.5, 4.5, 2.5, 3.5]))


def test_per_unit_prior_gives_structured_keepsets(fitted_units):
    net, guide = fitted_units
    ks = collapse(net, guide, keep=0.5)  # 5 of 10 units, globally: 5.5 4.5 4 3.5 3
    assert ks["conv"].weight_mask is None and ks["fc1"].weight_mask is None
    assert (ks["conv"].n_units, ks["fc1"].n_units) == (4, 6)
    assert ks["conv"].units.tolist() == [0, 2]
    assert ks["fc1"].units.tolist() == [1, 3, 5]
    assert ks["fc1"].values["weight"].shape == (6, 64)


def test_per_unit_layer_scope_and_threshold(fitted_units):
    net, guide = fitted_units
    ks = collapse(net, guide, keep=0.5, scope="layer")
    assert ks["conv"].units.tolist() == [0, 2]
    assert ks["fc1"].units.tolist() == [1, 3, 5]
    ks = collapse(net, guide, threshold=2.2)
    assert ks["conv"].units.tolist() == [0, 2]
    assert ks["fc1"].units.tolist() == [1, 3, 4, 5]


@pytest.mark.parametrize(("min_units", "conv", "fc1"), [(1, [2], [1]), (2, [0, 2], [1, 3])])
def test_min_units_keeps_the_best_units_of_an_emptied_layer(fitted_units, min_units, conv, fc1):
    net, guide = fitted_units
    ks = collapse(net, guide, threshold=100.0, min_units=min_units)
    assert ks["conv"].units.tolist() == conv
    assert ks["fc1"].units.tolist() == fc1


def test_min_units_does_not_apply_to_unstructured_layers(fitted):
    net, guide = fitted
    ks = collapse(net, guide, threshold=100.0, min_units=3)
    assert all(k.n_kept == 0 for k in ks.values())


def test_structured_keepsets_extract(fitted_units):
    net, guide = fitted_units
    ks = collapse(net, guide, keep=0.5)
    small = extract(net, ks, example_input=torch.zeros(1, 1, 6, 6))
    assert (small.conv.out_channels, small.fc1.in_features) == (2, 2 * 16)
    assert (small.fc1.out_features, small.fc2.in_features) == (3, 3)


# --- bad arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 0.0, 1.5, -0.1, "a", float("nan"), True, [0.5]])
def test_invalid_keep(fitted, keep):
    net, guide = fitted
    with pytest.raises(ValueError, match="keep must be a fraction"):
        collapse(net, guide, keep=keep)


@pytest.mark.parametrize("threshold", ["0.1", float("nan"), False])
def test_invalid_threshold(fitted, threshold):
    net, guide = fitted
    with pytest.raises(ValueError, match="threshold must be a number"):
        collapse(net, guide, threshold=threshold)


def test_invalid_scope(fitted):
    net, guide = fitted
    with pytest.raises(ValueError, match="scope"):
        collapse(net, guide, keep=0.5, scope="network")


def test_invalid_by(fitted):
    net, guide = fitted
    with pytest.raises(ValueError, match="by must be"):
        collapse(net, guide, keep=0.5, by="gradient")


def test_needs_a_guide_or_a_point(fitted):
    net, _ = fitted
    with pytest.raises(ValueError, match="guide"):
        collapse(net, keep=0.5)


def test_keepsets_are_keepsets_on_cpu(fitted):
    net, guide = fitted
    for k in collapse(net, guide, keep=0.5).values():
        assert isinstance(k, KeepSet)
        assert k.weight_mask.device.type == "cpu"


# --- rule="inclusion": remove only what the posterior says is probably not needed ------


@pytest.fixture
def gated_units():
    from bayesprune.priors import UnitGates

    net = sparsify(ConvMLP(), UnitGates())
    assert net.layer_names == ("conv", "fc1")
    guide = MAP(net)
    set_gates(guide, {"conv": [0.3, 0.1, 0.25, 0.0], "fc1": [0.9, 0.2, 0.5, 0.05, 0.25, 0.7]})
    return net, guide


def test_inclusion_rule_keeps_exactly_the_gates_with_theta_at_least_max_risk(gated_units):
    net, guide = gated_units
    ks = collapse(net, guide, rule="inclusion", max_risk=0.25)
    assert ks["conv"].units.tolist() == [0, 2]  # θ = 0.25 is kept: P(keep) >= max_risk
    assert ks["fc1"].units.tolist() == [0, 2, 4, 5]
    torch.testing.assert_close(ks["conv"].p_keep, torch.tensor([0.3, 0.1, 0.25, 0.0]))
    assert (ks["conv"].n_units, ks["fc1"].n_units) == (4, 6)
    assert ks["fc1"].values["weight"].shape == (6, 64)
    # the score rule at its default threshold (θ > 0.5) decides differently
    assert collapse(net, guide)["fc1"].units.tolist() == [0, 5]
    assert collapse(net, guide)["fc1"].p_keep is None


def test_inclusion_rule_min_units_takes_the_most_probable_units(gated_units):
    net, guide = gated_units
    ks = collapse(net, guide, rule="inclusion", max_risk=0.95, min_units=2)
    assert ks["conv"].units.tolist() == [0, 2]
    assert ks["fc1"].units.tolist() == [0, 5]


def test_inclusion_rule_min_units_breaks_ties_by_score(fitted_units):
    """Under MAP every P(keep) is a 0/1 indicator; a layer emptied by delta is refilled with
    its largest units, as the score rule does."""
    net, guide = fitted_units
    ks = collapse(net, guide, rule="inclusion", max_risk=0.5, delta=100.0, min_units=2)
    assert ks["conv"].units.tolist() == [0, 2]
    assert ks["fc1"].units.tolist() == [1, 3]


def test_inclusion_rule_under_map_is_the_threshold_rule_whatever_max_risk(fitted):
    net, guide = fitted
    by_score = collapse(net, guide, threshold=0.3)
    for eps in (0.01, 0.5, 0.99):
        ks = collapse(net, guide, rule="inclusion", max_risk=eps, delta=0.3)
        for n in LAYERS:
            assert torch.equal(ks[n].weight_mask, by_score[n].weight_mask)


@pytest.fixture
def normal_weights():
    """Per-weight HALO under mean-field with hand-set (μ, σ): P(|w| > δ) spread over (0, 1)."""
    from bayesprune.guides import MeanField

    net = sparsify(small_mlp(), HALO(), layers=nn.Linear)
    guide = MeanField(net)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n in LAYERS:
            shape = net.site(f"{n}.weight").shape
            guide.loc[key(f"{n}.weight")].copy_(0.2 * torch.randn(shape, generator=g))
            guide.rho[key(f"{n}.weight")].copy_(
                (0.02 + 0.1 * torch.rand(shape, generator=g)).expm1().log()
            )
    return net, guide


def test_inclusion_rule_gives_weight_masks_of_the_probable_weights(normal_weights):
    from bayesprune.pruning import inclusion_probs

    net, guide = normal_weights
    probs = inclusion_probs(net, guide, delta=0.1)
    ks = collapse(net, guide, rule="inclusion", max_risk=0.2, delta=0.1)
    point = guide.point()
    for n in LAYERS:
        assert torch.equal(ks[n].weight_mask, probs[n] >= 0.2)
        assert torch.equal(ks[n].p_keep, probs[n])
        assert torch.equal(ks[n].values["weight"], point[f"{n}.weight"])
    kept = sum(k.n_kept for k in ks.values())
    assert 0 < kept < sum(k.weight_mask.numel() for k in ks.values())


def test_inclusion_rule_gives_units_for_per_unit_priors_and_extracts():
    from bayesprune.guides import MeanField
    from bayesprune.pruning import inclusion_probs

    net = sparsify(ConvMLP(), HALO(per="unit"), layers=["conv", "fc1"])
    guide = MeanField(net, init_scale=0.01)
    with torch.no_grad():  # fc1 row norms 0.2 ... 0.6 around δ = 0.35
        norms = torch.tensor([0.2, 0.6, 0.3, 0.35, 0.4, 0.5])
        guide.loc[key("fc1.weight")].copy_(torch.ones(6, 64) / 8.0 * norms.view(6, 1))
    probs = inclusion_probs(net, guide, delta=0.35, seed=4)
    ks = collapse(net, guide, rule="inclusion", max_risk=0.5, delta=0.35, seed=4)
    for n in ("conv", "fc1"):
        assert ks[n].units.tolist() == (probs[n] >= 0.5).nonzero().flatten().tolist()
    kept = set(ks["fc1"].units.tolist())
    assert {1, 4, 5} <= kept and not kept & {0, 2}  # norms 0.6, 0.4, 0.5 stay; 0.2, 0.3 go
    small = extract(net, ks, example_input=torch.zeros(1, 1, 6, 6))
    assert small.fc1.out_features == ks["fc1"].n_kept


def test_inclusion_rule_turns_improbable_blocks_into_shortcuts():
    from bayesprune.priors import BlockGates
    from bayesprune.zoo import build

    net = sparsify(build("resnet20", width=0.25, input_size=8), BlockGates())
    guide = MAP(net)
    set_gates(guide, {"layer1.1": [0.04], "layer3.2": [0.06]})
    ks = collapse(net, guide, rule="inclusion", max_risk=0.05)
    assert ks["layer1.1"].identity and ks["layer1.1"].n_kept == 0
    assert not ks["layer3.2"].identity and ks["layer3.2"].p_keep.shape == (1,)
    assert sum(k.identity for k in ks.values()) == 1


@pytest.mark.parametrize("max_risk", [0, 0.0, 1, 1.0, -0.1, 1.5, None, True, "0.1", float("nan")])
def test_invalid_max_risk(gated_units, max_risk):
    net, guide = gated_units
    with pytest.raises(ValueError, match="max_risk"):
        collapse(net, guide, rule="inclusion", max_risk=max_risk)


def test_inclusion_rule_refuses_score_arguments_and_vice_versa(gated_units):
    net, guide = gated_units
    with pytest.raises(ValueError, match="keep and threshold"):
        collapse(net, guide, rule="inclusion", max_risk=0.1, keep=0.5)
    with pytest.raises(ValueError, match="keep and threshold"):
        collapse(net, guide, rule="inclusion", max_risk=0.1, threshold=0.5)
    with pytest.raises(ValueError, match="max_risk"):
        collapse(net, guide, max_risk=0.1)
    with pytest.raises(ValueError, match="unknown option.*by"):
        collapse(net, guide, rule="inclusion", max_risk=0.1, by="scale")
    with pytest.raises(ValueError, match="needs the fitted guide"):
        collapse(net, rule="inclusion", max_risk=0.1, point=guide.point())
    with pytest.raises(ValueError, match="rule must be"):
        collapse(net, guide, rule="posterior")
