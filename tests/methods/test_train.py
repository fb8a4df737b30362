"""The dense training helper runs through ``fit``: its loss is the mean cross-entropy, it
equals a hand-written Adam loop step for step, and masked fine-tuning holds the masks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bayesprune import sparsify
from bayesprune.guides import MAP
from bayesprune.inference import FusedELBO
from bayesprune.methods import apply_masks, magnitude_keep, train
from bayesprune.priors import Dense
from bayesprune.pruning import KeepSet


def test_dense_fit_loss_is_mean_cross_entropy(class_data, nets):
    net = sparsify(nets["mlp"](), Dense())
    assert net.sites == () and net.layer_names == ()
    x, y = class_data.train.x[:16], class_data.train.y[:16]
    loss = FusedELBO()(net, MAP(net), x, y, n_data=128) / 128
    torch.testing.assert_close(loss, F.cross_entropy(net.module(x), y), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("schedule", [None, "cosine"])
def test_train_equals_hand_written_adam_loop(class_data, nets, schedule):
    torch.manual_seed(1)
    module = nets["mlp"]()
    reference = copy.deepcopy(module)
    history = train(module, class_data, epochs=3, batch_size=16, lr=1e-2, seed=5, schedule=schedule)

    opt = torch.optim.Adam(reference.parameters(), lr=1e-2, fused=True)
    steps = 3 * class_data.num_batches(16)
    sched = (
        torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        if schedule
        else None
    )
    for epoch in range(3):
        losses = []
        for xb, yb in class_data.batches(16, epoch=epoch, seed=5):
            loss = F.cross_entropy(reference(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(float(loss.detach()))
        assert history[epoch]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    for a, b in zip(module.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_masked_fine_tune_keeps_masked_weights_at_zero(class_data, nets):
    module = nets["mlp"]()
    train(module, class_data, epochs=1, batch_size=16, lr=1e-2)
    keep = magnitude_keep(module, keep=0.3)
    train(module, class_data, epochs=2, batch_size=16, lr=1e-2, keep=keep)
    for name, ks in keep.items():
        w = module.get_submodule(name).weight
        assert bool((w[~ks.weight_mask] == 0).all())
        assert bool((w[ks.weight_mask] != 0).all())


def test_structured_masks_zero_rows_and_biases(class_data, nets):
    module = nets["mlp"]()
    keep = {"0": KeepSet(units=torch.tensor([1, 4, 7]), n_units=16)}
    train(module, class_data, epochs=1, batch_size=16, lr=1e-2, keep=keep)
    dropped = torch.ones(16, dtype=torch.bool)
    dropped[[1, 4, 7]] = False
    assert bool((module[0].weight[dropped] == 0).all()) and bool(
        (module[0].bias[dropped] == 0).all()
    )
    assert bool((module[0].weight[~dropped] != 0).all())


def test_apply_masks_rejects_a_layer_without_weight():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    with pytest.raises(ValueError, match="'1' has no weight"):
        apply_masks(module, {"1": KeepSet(units=torch.tensor([0]), n_units=2)})
