"""The Pyro model over a user's network.

:class:`BayesianNet` keeps the user's ``nn.Module`` intact as ``.module`` and
adds the sample sites of a prior to the chosen layers. Running the model
samples every site, runs the user's network with the sampled weights put in
place of the replaced parameters (swapped in for the call and put back after it,
as ``torch.func.functional_call`` does, with less work per step; names
preserved), and observes the targets under a data plate
scaled to the training-set size.

Parameters the prior does not replace (biases, BatchNorm, unselected layers)
stay ordinary ``nn.Parameter``\\ s of the module and are learned by maximum
likelihood alongside the guide.
The model exposes them to Pyro's param store (``"net$$$<name>"``, see
:mod:`bayesprune.nn.param_store`), so Pyro's own ``SVI`` trains them too.

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> net = sparsify(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), HALO())
>>> [s.name for s in net.sites]
['0.weight_scale', '0.weight', '2.weight_scale', '2.weight']
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from typing import TYPE_CHECKING

import pyro
import torch
import torch.nn as nn
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.nn.gate_consumers import gate_consumers, input_gate_hook
from bayesprune.nn.likelihoods import Categorical, Likelihood
from bayesprune.nn.param_gates import gated_parameters, is_param_gate
from bayesprune.nn.param_store import expose
from bayesprune.sites import Context, Site

if TYPE_CHECKING:
    from bayesprune.priors.base import Prior


class BayesianNet(nn.Module):
    """A Pyro model over ``module``'s chosen layers. Build it with :func:`bayesprune.sparsify`.

    :param module: the user's network (kept as ``self.module``, not copied).
    :param prior: the sparsity prior family.
    :param layer_names: the module names that carry the prior.
    :param likelihood: the observation model (default: categorical over logits).
    """

    #: namespace of the deterministic parameters in Pyro's param store
    pyro_prefix = "net"

    def __init__(
        self,
        module: nn.Module,
        prior: Prior,
        layer_names: list[str],
        likelihood: Likelihood | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.prior = prior
        self.likelihood = likelihood if likelihood is not None else Categorical()
        self.layer_names: tuple[str, ...] = tuple(layer_names)
        #: the sites of each layer: the one record of the net's sites (live unit removal
        #: rewrites it); :attr:`sites`, :attr:`replacing` and :attr:`gates` are read from it
        self.layer_sites: dict[str, list[Site]] = {
            n: prior.layer_sites(n, module.get_submodule(n)) for n in self.layer_names
        }
        self.example_input: Tensor | None = None
        self._gate_targets: dict[str, str] | None = None
        self._gate_readers: dict[str, list[tuple[str, int]]] | None = None
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ConfigError(f"{type(prior).__name__}: duplicate site names {names}")

    # --- facts ------------------------------------------------------------------------
    # Derived from ``layer_sites`` on every read, so nothing has to be kept in sync by hand.
    # Cost per read: ~1 us (LeNet-300-100, 6 sites) to ~4 us (ResNet-20, 63 sites); a
    # training step reads three of them (guide.sites, gates, replacing).
    def _all_sites(self) -> Iterator[Site]:
        return chain.from_iterable(map(self.layer_sites.__getitem__, self.layer_names))

    @property
    def sites(self) -> tuple[Site, ...]:
        """Every site, layer by layer in ``layer_names`` order (the model's sampling order)."""
        return tuple(self._all_sites())

    @property
    def replacing(self) -> tuple[Site, ...]:
        """The sites that replace a module parameter (sampled weights)."""
        return tuple([s for s in self._all_sites() if s.replaces is not None])

    @property
    def gates(self) -> tuple[Site, ...]:
        """The gate sites (``role == "gate"``)."""
        return tuple([s for s in self._all_sites() if s.role == "gate"])

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            return p.dtype
        return torch.get_default_dtype()

    def context(self, n_data: int) -> Context:
        return Context(n_data=int(n_data), device=self.device, dtype=self.dtype)

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no site named {name!r}; sites: {[s.name for s in self.sites]}")

    def initial_value(self, site: Site) -> Tensor:
        """Starting value of ``site`` for guides (from the module's current weights)."""
        layer = self.module.get_submodule(site.layer)
        return self.prior.initial_value(site, layer).to(self.device)

    def deterministic_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The module's parameters that are *not* replaced by a sample site."""
        replaced = {s.replaces for s in self.replacing}
        for name, p in self.module.named_parameters():
            if name not in replaced:
                yield name, p

    # --- the model --------------------------------------------------------------------
    def run(self, values: dict[str, Tensor], x: Tensor) -> Tensor:
        """The network's output on ``x`` with the site values put in place: sampled weights
        replace parameters, gate values multiply their units' outputs (or, for parameter
        gates such as head gates, the parameter: :mod:`bayesprune.nn.param_gates`)."""
        gates = self.gates
        targets = self.gate_targets(x) if any(not is_param_gate(s) for s in gates) else {}
        readers = self.gate_readers(x) if any(_post(s) for s in gates) else {}
        handles = []
        try:
            for s in gates:
                if is_param_gate(s):
                    continue  # multiplies a parameter, swapped in below
                gate = _unit_gates(values[s.name], s)
                if _post(s):  # after the nonlinearity: where the next layers read the unit
                    for name, repeat in readers[s.layer]:
                        mod = self.module.get_submodule(name)
                        hook = input_gate_hook(gate, repeat)
                        handles.append(mod.register_forward_pre_hook(hook))
                    continue
                mod = self.module.get_submodule(targets[s.name])
                handles.append(mod.register_forward_hook(_gate_hook(gate, s.meta["dim"])))
            overrides = {s.replaces: values[s.name] for s in self.replacing}
            overrides.update(gated_parameters(gates, values, overrides, self.module))
            with _swapped(self.module, overrides):
                return self.module(x)
        finally:
            for h in handles:
                h.remove()

    def gate_targets(self, x: Tensor | None = None) -> dict[str, str]:
        """Which module's output each gate multiplies: the gated layer itself, or the
        BatchNorm that directly consumes its output (so a closed gate zeroes the unit's
        contribution exactly). Found once by tracing one forward pass; cached."""
        if self._gate_targets is None:
            if x is None:
                x = self.example_input
            explicit = {s.name: s.meta["target"] for s in self.gates if not is_param_gate(s)}
            if x is None:
                return explicit
            self._gate_targets = _follow_batchnorm(self.module, explicit, x[:1])
        return self._gate_targets

    def gate_readers(self, x: Tensor | None = None) -> dict[str, list[tuple[str, int]]]:
        """For post-activation gates: the layers that read each gated layer's units and the
        input features per unit (:func:`~bayesprune.nn.gate_consumers.gate_consumers`).
        Traced once; cached (names and features per unit survive live removal)."""
        if self._gate_readers is None:
            if x is None:
                x = self.example_input
            if x is None:
                raise RuntimeError("gate_readers: no input to trace the network with")
            layers = [s.layer for s in self.gates if _post(s)]
            self._gate_readers = gate_consumers(self.module, layers, x[:1].detach())
        return self._gate_readers

    def log_prior(self, values: dict[str, Tensor], ctx: Context) -> Tensor:
        """``Σ log p(sites)`` computed directly (the prior's fused form)."""
        total = torch.zeros((), device=ctx.device, dtype=ctx.dtype)
        for sites in self.layer_sites.values():
            total = total + self.prior.log_prob(sites, values, ctx)
        return total

    def model(self, x: Tensor, y: Tensor | None = None, *, n_data: int | None = None) -> Tensor:
        """The Pyro model: sample every site, run the net, observe ``y``.

        :param n_data: training-set size the mini-batch stands for (default: ``len(x)``).
        """
        ctx = self.context(n_data if n_data is not None else x.shape[0])
        expose(self.pyro_prefix, self.deterministic_parameters())
        values: dict[str, Tensor] = {}
        for s in self.sites:
            values[s.name] = pyro.sample(s.name, self.prior.distribution(s, values, ctx))
        out = self.run(values, x)
        self.likelihood.observe(out, y, ctx.n_data)
        return out

    def forward(self, x: Tensor, y: Tensor | None = None, *, n_data: int | None = None) -> Tensor:
        return self.model(x, y, n_data=n_data)

    # --- prediction -------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, values: dict[str, Tensor], x: Tensor, *, batch_size: int = 1024) -> Tensor:
        """Outputs on ``x`` (in eval mode) with fixed site values, e.g. ``guide.point()``."""
        was_training = self.module.training
        self.module.eval()
        try:
            outs = [
                self.run(values, x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)
            ]
        finally:
            self.module.train(was_training)
        return torch.cat(outs)

    def extra_repr(self) -> str:
        return f"prior={self.prior!r}, layers={list(self.layer_names)}"


@contextmanager
def _swapped(module: nn.Module, overrides: dict[str, Tensor]) -> Iterator[None]:
    """``module``'s parameters named in ``overrides`` replaced by the given tensors for the
    duration of the block, then put back (even on error). What
    ``torch.func.functional_call(module, overrides, strict=False, tie_weights=False)`` does
    for parameters, without its per-call bookkeeping (a sizeable share of a step on small
    networks)."""
    slots = []
    for name, value in overrides.items():
        owner, _, attr = name.rpartition(".")
        mod = module.get_submodule(owner)
        slots.append((mod, attr, mod._parameters[attr], value))
    try:
        for mod, attr, _, value in slots:
            mod._parameters[attr] = value
        yield
    finally:
        for mod, attr, old, _ in slots:
            mod._parameters[attr] = old


def _post(site: Site) -> bool:
    """Whether a gate site acts after its unit's nonlinearity (see :mod:`.gate_consumers`)."""
    return site.meta.get("place") == "post-activation"


def _unit_gates(gate: Tensor, site: Site) -> Tensor:
    """One gate value per unit: a gate tied across the groups of a grouped conv (site meta
    ``tile``, :mod:`bayesprune.priors.group_ties`) serves units ``p, p + period, ...``."""
    tile = site.meta.get("tile", 1)
    return gate.repeat(tile) if tile > 1 else gate


def _gate_hook(gate: Tensor, dim: int):
    def hook(module: nn.Module, inputs: object, out: Tensor) -> Tensor:
        shape = [1] * out.dim()
        shape[dim] = -1
        return out * gate.reshape(shape)

    return hook


@torch.no_grad()
def _follow_batchnorm(module: nn.Module, targets: dict[str, str], x: Tensor) -> dict[str, str]:
    """Move each gate from its layer to a BatchNorm fed directly by that layer's output."""
    outputs: dict[int, str] = {}
    alive: list[Tensor] = []  # recorded outputs stay alive: a freed tensor's id gets reused
    consumers: dict[str, str] = {}
    names = {m: n for n, m in module.named_modules()}
    handles = []

    def record(mod: nn.Module, inputs: tuple, out: object) -> None:
        name = names.get(mod)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and inputs:
            src = outputs.get(id(inputs[0]))
            if src is not None and src not in consumers:
                consumers[src] = name
        if isinstance(out, Tensor):
            outputs[id(out)] = name
            alive.append(out)

    wanted = set(targets.values())
    for mod in module.modules():
        if names.get(mod) in wanted or isinstance(mod, nn.modules.batchnorm._BatchNorm):
            handles.append(mod.register_forward_hook(record))
    was = module.training
    module.eval()
    try:
        module(x)
    finally:
        module.train(was)
        for h in handles:
            h.remove()
    return {site: consumers.get(layer, layer) for site, layer in targets.items()}
