"""MAP: a Delta guide -- point estimates, i.e. penalised maximum likelihood.

With a Delta guide the ELBO is ``log p(y | θ) + log p(θ)``, so for the HALO
prior this is exactly the paper's penalised training. Values live in each
site's support through Pyro's ``biject_to`` (``exp`` for positive scales);
there is no Jacobian term, so the optimum is the MAP in the constrained space.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> guide = MAP(sparsify(nn.Linear(3, 2), HALO(), layers=nn.Linear))
>>> sorted(guide.state_dict())
['unconstrained./weight', 'unconstrained./weight_scale']
"""

from __future__ import annotations

import pyro.distributions as dist
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor
from torch.distributions import biject_to

from bayesprune.guides.base import Guide, key
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.sites import Site


class MAP(Guide):
    """Delta guide over every site.

    :param net: the model (from :func:`bayesprune.sparsify`); guide values start at
        the prior's initial values (the network's current weights).
    """

    name = "map"

    def __init__(self, net: BayesianNet) -> None:
        super().__init__(net)
        self.unconstrained = nn.ParameterDict()
        for s in self.sites:
            init = net.initial_value(s).detach()
            self.unconstrained[key(s.name)] = nn.Parameter(biject_to(s.support).inv(init).clone())

    def value(self, site: Site) -> Tensor:
        return biject_to(site.support)(self.unconstrained[key(site.name)])

    def site_distribution(self, site: Site) -> Distribution:
        return dist.Delta(self.value(site), event_dim=site.event_dim)

    def rsample_site(self, site: Site) -> tuple[Tensor, None]:
        return self.value(site), None

    def point_site(self, site: Site) -> Tensor:
        return self.value(site)
