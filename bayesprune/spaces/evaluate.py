"""Measure a population: extract each subnetwork, optionally fine-tune it, score it.

Every subnetwork (``{layer: KeepSet}`` from a space's ``sample``) is physically extracted
with :func:`bayesprune.extract` (the masked copy computes the same function, tested in
``tests/pruning``; extracting also gives honest FLOPs and parameters), optionally
fine-tuned with the shared dense trainer :func:`bayesprune.methods.train` (Adam,
cross-entropy; the same training examples, order and seed for every subnetwork), and
scored on a held-out split (the validation split by default: spaces are compared to make
decisions, so never on the test split unless asked). FLOPs and parameters come from
:func:`bayesprune.metrics.count_flops` / :func:`~bayesprune.metrics.count_parameters` of
the extracted network.

>>> import torch, torch.nn as nn
>>> from bayesprune.data import synthetic_classification
>>> from bayesprune.spaces import PruningSpace
>>> data = synthetic_classification(64, 32, 0, input_shape=(4,), n_classes=2)
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> space = PruningSpace(net, example_input=data.train.x[:1])
>>> pop = evaluate(net, space.sample(3), data, name="uniform")
>>> len(pop), pop.counts.shape, bool((pop.flops <= 2 * (4 * 8 + 8 * 2)).all())
(3, (3, 1), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from bayesprune.data.dataset import Dataset, Split
from bayesprune.errors import ConfigError
from bayesprune.methods.train import accuracy, train
from bayesprune.metrics import count_flops, count_parameters
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.extract import extract
from bayesprune.pruning.keepset import KeepSet
from bayesprune.spaces.base import plain
from bayesprune.spaces.population import Population


def _finetune_data(data: Dataset, examples: int | None, seed: int) -> Dataset:
    if examples is None or examples >= data.n_train:
        return data
    idx = data.permutation(0, seed)[:examples].to(data.train.x.device)
    train_split = Split(data.train.x[idx], data.train.y[idx])
    return Dataset(train=train_split, n_classes=data.n_classes, name=data.name)


def evaluate(
    net: BayesianNet | nn.Module,
    population: Sequence[dict[str, KeepSet]],
    data: Dataset,
    *,
    name: str = "space",
    split: str = "val",
    finetune_epochs: int = 0,
    finetune_examples: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    example_input: Tensor | None = None,
) -> Population:
    """Extract, (fine-tune,) and score every subnetwork of ``population``.

    :param net: the network the subnetworks were sampled from (its weights, or the fitted
        ones the keep-sets carry in ``values``, are inherited; ``net`` is never changed).
    :param population: keep-sets, e.g. ``space.sample(n)``.
    :param data: an in-memory data set with the ``split`` to score on.
    :param name: the population's label.
    :param split: the split scored (``"val"``; ``"test"`` only for a final report).
    :param finetune_epochs: epochs of :func:`bayesprune.methods.train` per subnetwork
        (0: none; ``errors`` are then the inherited-weights errors).
    :param finetune_examples: fine-tune on this many training examples (a fixed random
        subset, the same for every subnetwork); ``None``: all.
    :param lr: fine-tune learning rate. :param batch_size: fine-tune batch size.
    :param seed: fine-tune data order and subset.
    :param example_input: input batch to trace the network (default: the first example
        of ``split``).
    :raises ValueError: for an empty population, a missing split or a negative
        ``finetune_epochs`` / ``finetune_examples``.
    """
    if len(population) == 0:
        raise ConfigError("evaluate: population is empty")
    if (
        isinstance(finetune_epochs, bool)
        or not isinstance(finetune_epochs, int)
        or (finetune_epochs < 0)
    ):
        raise ConfigError(
            f"evaluate: finetune_epochs must be an integer >= 0, got {finetune_epochs!r}"
        )
    if finetune_examples is not None and finetune_examples < 1:
        raise ConfigError(f"evaluate: finetune_examples must be >= 1, got {finetune_examples!r}")
    held = data.split(split)
    x = held.x[:1] if example_input is None else example_input[:1]
    module = plain(net)
    dense_flops = count_flops(module, x)["flops"]
    dense_params = count_parameters(module)["params"]
    tune = _finetune_data(data, finetune_examples, seed) if finetune_epochs else None
    layers = tuple(n for n, k in population[0].items() if k.units is not None)
    rows = []
    for keep in population:
        if tuple(n for n, k in keep.items() if k.units is not None) != layers:
            raise ConfigError(f"evaluate: every subnetwork must prune layers {layers}")
        small = extract(net, keep, example_input=x)
        err0 = 1.0 - accuracy(small, held.x, held.y)
        err = err0
        if tune is not None:
            torch.manual_seed(seed)
            train(small, tune, epochs=finetune_epochs, batch_size=batch_size, lr=lr, seed=seed)
            err = 1.0 - accuracy(small, held.x, held.y)
        rows.append(
            (
                [keep[n].n_kept for n in layers],
                err,
                err0,
                count_flops(small, x)["flops"],
                count_parameters(small)["params"],
            )
        )
    counts, errors, errors0, flops, params = (list(c) for c in zip(*rows, strict=True))
    return Population(
        name=name,
        layers=layers,
        counts=np.array(counts, dtype=np.int64),
        errors=np.array(errors),
        errors_inherited=np.array(errors0),
        flops=np.array(flops, dtype=np.float64),
        params=np.array(params, dtype=np.float64),
        dense_flops=float(dense_flops),
        dense_params=float(dense_params),
        keep=list(population),
    )
