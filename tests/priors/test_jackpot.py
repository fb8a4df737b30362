"""Jackpot prior: bad input, per-layer rates, the mask distribution, the restricted search."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import bayesprune as bp
from bayesprune.data import synthetic_classification
from bayesprune.guides import JackpotGuide, default_guide
from bayesprune.inference import FusedELBO
from bayesprune.inference.distributed import Replicas
from bayesprune.methods.train import train
from bayesprune.priors import Jackpot, from_config
from bayesprune.priors.jackpot_mask import MaskedWeight
from bayesprune.priors.jackpot_search import JackpotSearch
from bayesprune.priors.jackpot_swaps import restricted_swaps, swap_fraction, top_k_mask
from tests.helpers import mlp


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"sparsity": 0.0}, "sparsity"),
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.5}, "sparsity"),
        ({"sparsity": True}, "sparsity"),
        ({"sparsity": "0.9"}, "sparsity"),
        ({"init": "kaiming"}, "init"),
        ({"restrict": 1}, "restrict"),
        ({"budget_epochs": 0}, "budget_epochs"),
        ({"pretrained": False}, "pretrained"),
        ({"pretrained": None}, "pretrained"),
        ({"pretrained": 3}, "pretrained"),
    ],
)
def test_bad_input_names_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        Jackpot(**kwargs)


def test_missing_or_mismatched_pretrained_weights_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="pretrained"):
        bp.sparsify(mlp(6, 8, 3), Jackpot(pretrained=tmp_path / "nothing.pt"))
    with pytest.raises(ValueError, match="pretrained"):
        bp.sparsify(mlp(6, 8, 3), Jackpot(pretrained=nn.Linear(6, 8).state_dict()))


def test_per_layer_counts_come_from_one_global_magnitude_threshold():
    module = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        module[0].weight.copy_(torch.tensor([[5.0, -0.1], [0.2, -4.0]]))
        module[1].weight.copy_(torch.tensor([[0.3, 3.0], [-2.0, 0.4]]))
    # sparsity 0.5: keep round(0.5 * 8) = 4 largest |w| overall: 5, 4, 3, 2 -> 2 per layer
    net = bp.sparsify(module, Jackpot(sparsity=0.5))
    assert [s.meta["keep"] for s in net.sites] == [2, 2]
    # sparsity 0.75: keep 2 overall: 5 and 4, both in layer 0
    net = bp.sparsify(module, Jackpot(sparsity=0.75))
    assert [s.meta["keep"] for s in net.sites] == [2, 0]
    guide = JackpotGuide(net)
    assert guide.mask(net.sites[0]).tolist() == [[True, False], [False, True]]
    assert not guide.mask(net.sites[1]).any()


def test_pretrained_state_dict_is_loaded_before_the_rates_are_computed():
    """The reference code computes the rates on the pre-trained model, then searches on a
    rebuilt (random) one; here rates, masks and the search share the loaded weights."""
    torch.manual_seed(0)
    trained = mlp(6, 8, 3)
    with torch.no_grad():
        trained[2].weight.mul_(50.0)  # layer 2 dominates the global ranking
    fresh = mlp(6, 8, 3)
    net = bp.sparsify(fresh, Jackpot(sparsity=0.5, pretrained=trained.state_dict()))
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    keep = {s.layer: s.meta["keep"] for s in net.sites}
    assert (
        keep["2"] == 24 and keep["0"] == round(0.5 * 72) - 24
    )  # loaded: layer 2 (x50) has the 24 largest
    guide = default_guide(net)
    assert isinstance(guide, JackpotGuide)
    w0 = net.prior.frozen_weight("2")
    assert w0 is fresh[2].weight and torch.equal(guide.point()["2.weight"], w0)


def test_masked_weight_log_mass_is_constant_for_masks_of_size_k():
    w0 = torch.tensor([[1.5, -2.0, 0.3], [0.7, 0.9, -1.1]])
    d = MaskedWeight(w0, probs=2 / 6)
    expected = 2 * math.log(2 / 6) + 4 * math.log(4 / 6)
    for on in ([0, 1], [2, 5], [3, 4]):
        m = torch.zeros(6)
        m[on] = 1.0
        assert d.log_prob(w0 * m.reshape(2, 3)).item() == pytest.approx(expected)
    assert d.log_prob(torch.full((2, 3), 0.5)).item() == -math.inf
    assert d.sample((4,)).shape == (4, 2, 3)
    # an exact zero of w0 is 0 under both outcomes: its entry has log mass 0
    zero = MaskedWeight(torch.tensor([0.0, 2.0]), probs=0.5)
    assert zero.log_prob(torch.tensor([0.0, 2.0])).item() == pytest.approx(math.log(0.5))


def test_swap_fraction_decays_to_zero():
    assert [swap_fraction(e, 5) for e in range(6)] == [(1 - e / 5) ** 4 for e in range(5)] + [0.0]


def test_restricted_swaps_take_the_most_confident_pairs():
    scores = torch.tensor([9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 0.5, 6.0])
    mask = torch.tensor([False, True, False, True, False, True, True, True])  # k = 5
    # top-5 = {0, 2, 4, 7, 5}: d = 3 proposed (0, 2, 4 in; 6, 1, 3 out, worst first)
    for fraction, n in [(None, 3), (1.0, 3), (0.5, 2), (0.2, 1), (0.0, 0)]:
        new, d, b = restricted_swaps(scores, mask, 5, fraction)
        assert (int(d), int(b)) == (3, n)
        assert int(new.sum()) == 5
        came_in = (new & ~mask).nonzero().flatten().tolist()
        went_out = (mask & ~new).nonzero().flatten().tolist()
        assert came_in == sorted([0, 2, 4][:n]) and went_out == sorted([6, 1, 3][:n])
    assert torch.equal(restricted_swaps(scores, mask, 5, None)[0], top_k_mask(scores, 5))


def _one_step_state(y: int):
    module = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([[3.0, 0.5], [1.0, 3.0]]))
    net = bp.sparsify(module, Jackpot(sparsity=0.5))  # keeps the two 3.0s
    guide = JackpotGuide(net)
    site = net.sites[0]
    with torch.no_grad():  # the scores now propose: (1, 0) in, (0, 0) out
        guide.scores["weight"].copy_(torch.tensor([[-10.0, 0.0], [10.0, 5.0]]))
    x = torch.tensor([[1.0, 0.0]])
    state = SimpleNamespace(
        net=net,
        guide=guide,
        batch=(x, torch.tensor([y]), 1),
        loss_fn=FusedELBO(),
        replicas=Replicas(),
        epoch=0,
        history=[{}],
    )
    return state, guide.mask(site)


@pytest.mark.parametrize(("label", "accepted"), [(0, False), (1, True)])
def test_restriction_keeps_a_swap_only_if_the_batch_loss_does_not_rise(label, accepted):
    state, mask = _one_step_state(label)
    before = mask.clone()
    search = JackpotSearch(state.net.prior)
    search.on_epoch_start(state)
    search.on_step_end(state)
    search.on_epoch_end(state)
    record = state.history[-1]
    assert record["jackpot_proposed"] == [1] and record["jackpot_budget"] == [1]
    swapped = torch.tensor([[False, False], [True, True]])
    if accepted:  # label 1: bringing in w[1, 0] = 1 raises the right logit
        assert torch.equal(mask, swapped) and record["jackpot_swaps"] == [1]
    else:  # label 0: dropping w[0, 0] = 3 raises the loss
        assert torch.equal(mask, before) and record["jackpot_swaps"] == [0]


def _pretrained_net(sparsity: float, **kwargs):
    torch.manual_seed(0)
    data = synthetic_classification(n_train=192, n_val=64, input_shape=(6,), n_classes=3)
    module = mlp(6, 8, 3)
    train(module, data, epochs=3, batch_size=32, lr=1e-2)
    return data, module, bp.sparsify(module, Jackpot(sparsity=sparsity, **kwargs), layers="0")


def test_swaps_per_step_follow_the_decaying_budget():
    data, _, net = _pretrained_net(0.7, budget_epochs=3)
    result = bp.fit(net, data, epochs=4, batch_size=16, lr=0.05, progress=False)
    budgets = []
    for e, h in enumerate(result.history):
        f = (1 - e / 3) ** 4 if e < 3 else 0.0
        assert h["swap_fraction"] == f
        assert len(h["jackpot_swaps"]) == 12
        for d, b, s in zip(
            h["jackpot_proposed"], h["jackpot_budget"], h["jackpot_swaps"], strict=True
        ):
            assert b == (math.ceil(d * f) if e < 3 else 0)
            assert s in (0, b)
        budgets += h["jackpot_budget"]
    assert len(set(budgets)) > 2  # the budget actually varies
    restricted = [
        (d, b)
        for h in result.history[1:3]
        for d, b in zip(h["jackpot_proposed"], h["jackpot_budget"], strict=True)
    ]
    assert any(b < d for d, b in restricted)  # and bites: fewer swaps than proposed
    assert sum(result.history[0]["jackpot_swaps"]) > 0
    guide = result.guide
    assert int(guide.mask(net.sites[0]).sum()) == net.sites[0].meta["keep"]


def test_without_restriction_the_mask_is_the_top_k_of_the_scores_after_every_step():
    data, _, net = _pretrained_net(0.7, restrict=False)
    masks = []

    class Spy:
        def on_step_end(self, state):
            s, sc, m = state.guide.jackpot_layers()[0]
            masks.append(torch.equal(m, top_k_mask(sc, s.meta["keep"])))

    result = bp.fit(net, data, epochs=1, batch_size=32, lr=0.05, progress=False, callbacks=[Spy()])
    assert masks and all(masks)
    assert result.history[0]["swap_fraction"] is None
    assert result.history[0]["jackpot_swaps"] == result.history[0]["jackpot_proposed"]


def test_fit_collapse_extract_keeps_the_pretrained_weights_bitwise():
    data, module, net = _pretrained_net(0.8)
    pretrained = {k: v.clone() for k, v in module.state_dict().items()}
    result = bp.fit(net, data, epochs=2, batch_size=16, lr=0.05, progress=False)
    for k, v in module.state_dict().items():  # frozen: nothing but the scores trained
        assert torch.equal(v, pretrained[k]), k
    keep = bp.collapse(net, result.guide)
    mask = result.guide.mask(net.sites[0]).cpu()
    assert list(keep) == ["0"] and torch.equal(keep["0"].weight_mask, mask)
    small = bp.extract(net, keep)
    w = small[0].weight
    assert torch.equal(w[mask], pretrained["0.weight"][mask]) and not w[~mask].any()
    for k in ("0.bias", "2.weight", "2.bias"):
        assert torch.equal(small.state_dict()[k], pretrained[k])
    x = data.test.x
    torch.testing.assert_close(small.eval()(x), net.predict(result.guide.point(), x))
    assert net.prior.kept_fraction(net, result.guide.point()) == pytest.approx(
        net.sites[0].meta["keep"] / 48
    )


def test_config_round_trips():
    prior = Jackpot(sparsity=0.95, init="random", restrict=False, budget_epochs=4)
    again = from_config(prior.config())
    assert again.config() == prior.config() and isinstance(again, Jackpot)
