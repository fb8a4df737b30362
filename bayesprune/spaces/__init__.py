"""Network pruning spaces (He & Xiao, 2023) and the posterior-induced space.

A pruning space is a population of structured subnetworks of one network. Sample one
(:class:`PruningSpace`: uniform over per-layer widths within a FLOPs/params/ratio range;
:class:`PosteriorSpace`: each unit kept with its fitted gate probability θ), measure it
(:func:`evaluate`: extract, optionally fine-tune with the shared trainer, score on the
validation split), compare populations by the EDF of their errors (:func:`edf`,
:func:`dominance`, :func:`complexity_weights`), check whether the winners share a
FLOPs-to-parameters ratio (:func:`ratio_finding`) and plot it (:func:`plot_edfs`).

>>> import torch, torch.nn as nn
>>> from bayesprune.spaces import PruningSpace
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> [k["0"].n_kept for k in PruningSpace(net, example_input=torch.zeros(1, 4),
...                                       flops=(0.5, 0.5)).sample(3)]
[4, 4, 4]
"""

from bayesprune.spaces.base import Space
from bayesprune.spaces.constraints import Constraints
from bayesprune.spaces.costs import CostModel
from bayesprune.spaces.edf import complexity_weights, dominance, edf
from bayesprune.spaces.evaluate import evaluate
from bayesprune.spaces.plot import plot_edfs
from bayesprune.spaces.population import Population
from bayesprune.spaces.posterior import PosteriorSpace
from bayesprune.spaces.ratio import ratio_finding
from bayesprune.spaces.uniform import PruningSpace

__all__ = [
    "Constraints",
    "CostModel",
    "Population",
    "PosteriorSpace",
    "PruningSpace",
    "Space",
    "complexity_weights",
    "dominance",
    "edf",
    "evaluate",
    "plot_edfs",
    "ratio_finding",
]
