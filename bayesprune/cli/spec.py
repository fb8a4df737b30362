"""Model specs: a TOML file naming network, data, prior, guide, fit schedule and collapse rule.

Every seed method ships one under ``models/``. A spec is validated as a whole
before anything runs; mistakes raise :class:`~bayesprune.errors.SpecError` (a
``ValueError``) naming the file, the section and the key.

Example (``models/halo-lenet5.toml``)::

    [network]
    name = "lenet5"
    [data]
    name = "fashion-mnist"
    [prior]
    name = "halo"
    xi = 3e-5
    psi = 3e-5
    [guide]
    name = "map"
    [fit]
    epochs = 10
    [collapse]
    keep = 0.02

Three more sections (:mod:`bayesprune.cli.pretrained`, :mod:`bayesprune.cli.method_spec`,
:mod:`bayesprune.cli.budget_spec`): ``[pretrain]`` trains the dense network before the fit
(or ``[network] pretrained = "path"`` loads saved weights) -- a ``jackpot`` prior needs one
of the two; ``[method]`` replaces ``[prior]``, ``[guide]`` and ``[collapse]`` by a baseline
(magnitude or L1-structured pruning after dense training with the ``[fit]`` options);
``[budget]`` (e.g. ``flops = 0.1``) steers the fit to a size and replaces ``[collapse]``
by a cut to that size.

>>> spec = Spec.from_dict({"network": {"name": "lenet300"}, "prior": {"name": "halo"}})
>>> spec.fit["epochs"]
10
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bayesprune.cli.budget_spec import budget_of, check_budget_section, control_of
from bayesprune.cli.method_spec import UNUSED_FIT, check_method, layer_selector, method_layers
from bayesprune.cli.pretrained import (
    check_pretrain,
    check_pretrained_path,
    load_weights,
)
from bayesprune.data import Dataset, get_dataset
from bayesprune.data.augment import AUGMENTATIONS, augmented_loader
from bayesprune.errors import DataError, SpecError
from bayesprune.guides import guide_from_config
from bayesprune.guides.base import Guide
from bayesprune.inference.losses import LOSSES
from bayesprune.inference.optimizer import OPTIMIZERS
from bayesprune.inference.schedules import make_schedule
from bayesprune.nn import BayesianNet, sparsify
from bayesprune.priors import from_config as prior_from_config
from bayesprune.zoo import build as build_network

SECTIONS = (
    "network",
    "data",
    "prior",
    "guide",
    "fit",
    "collapse",
    "pretrain",
    "method",
    "budget",
)
#: sections a ``[method]`` spec cannot have (the method is its prior, guide and collapse)
NOT_WITH_METHOD = ("prior", "guide", "collapse", "pretrain")
#: ``[data]`` keys for the training loader, not for the data set's loader
LOADER_KEYS = ("augment", "workers")

FIT_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 128,
    "lr": 1e-3,
    "role_lr": None,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "schedule": None,
    "loss": "fused",
    "seed": 0,
    "log_every": 50,
    "checkpoint_every": None,
    "device": None,
    "remove_dead": False,
}
COLLAPSE_KEYS = ("keep", "threshold", "scope", "by")


def _layers(value: Any, where: str) -> Any:
    """TOML layer selectors: names of torch.nn classes become types, other strings are
    module names or glob patterns."""
    return layer_selector(value, where, "prior")


@dataclass
class Spec:
    """A parsed, validated model spec."""

    network: dict[str, Any]
    data: dict[str, Any] = field(default_factory=lambda: {"name": "fashion-mnist"})
    prior: dict[str, Any] = field(default_factory=dict)
    guide: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    collapse: dict[str, Any] = field(default_factory=dict)
    source: str = "<dict>"
    #: ``[pretrain]``: dense epochs before the fit (empty: none)
    pretrain: dict[str, Any] = field(default_factory=dict)
    #: ``[method]``: a baseline instead of a prior (empty: a prior spec); ``prior`` is then
    #: the flat ``{"name": "dense"}`` the method's fits run under
    method: dict[str, Any] = field(default_factory=dict)
    #: ``[budget]``: one measure and the controller's settings (empty: no budget)
    budget: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> Spec:
        if not isinstance(raw, dict):
            raise SpecError(f"{source}: a spec is a table of sections, got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(SECTIONS))
        if unknown:
            raise SpecError(f"{source}: unknown section(s) {unknown}; known: {list(SECTIONS)}")
        for sec in SECTIONS:
            if sec in raw and not isinstance(raw[sec], dict):
                raise SpecError(f"{source}: [{sec}] must be a table, got {raw[sec]!r}")
        raw = copy.deepcopy(raw)
        network = raw.get("network")
        if not network or "name" not in network:
            raise SpecError(f'{source}: [network] needs a name (e.g. name = "lenet5")')
        method = raw.get("method")
        if method is not None:
            both = [sec for sec in NOT_WITH_METHOD if sec in raw]
            if both:
                raise SpecError(
                    f"{source}: [method] and [{both[0]}] cannot go together: a [method] spec "
                    "prunes with a baseline (no prior, guide or collapse rule; [fit] is its "
                    "dense training); drop one of them"
                )
            prior: dict[str, Any] = {"name": "dense"}
        else:
            prior = raw.get("prior") or {}
            if "name" not in prior:
                raise SpecError(
                    f'{source}: [prior] needs a name (e.g. name = "halo"), or a [method] '
                    'section (e.g. name = "magnitude")'
                )
        fit = dict(FIT_DEFAULTS)
        bad = sorted(set(raw.get("fit", {})) - set(FIT_DEFAULTS))
        if bad:
            raise SpecError(
                f"{source}: unknown key(s) {bad} in [fit]; known: {sorted(FIT_DEFAULTS)}"
            )
        fit.update(raw.get("fit", {}))
        coll = raw.get("collapse", {})
        bad = sorted(set(coll) - set(COLLAPSE_KEYS))
        if bad:
            raise SpecError(
                f"{source}: unknown key(s) {bad} in [collapse]; known: {list(COLLAPSE_KEYS)}"
            )
        if raw.get("budget") == {}:  # an empty table would be no budget, silently
            check_budget_section({}, source)
        data = raw.get("data") or {"name": "fashion-mnist"}
        if "name" not in data:
            raise SpecError(f'{source}: [data] needs a name (e.g. name = "fashion-mnist")')
        spec = cls(
            network=network,
            data=data,
            prior=prior,
            guide=raw.get("guide") or {},
            fit=fit,
            collapse=coll,
            source=source,
            pretrain=raw.get("pretrain") or {},
            method=method or {},
            budget=raw.get("budget") or {},
        )
        spec.validate()
        return spec

    @classmethod
    def load(cls, path: str | Path) -> Spec:
        """Read and validate a TOML spec.

        :raises SpecError: naming the file for unreadable TOML or a bad section/key.
        """
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"spec {path} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SpecError(f"spec {path} is not valid TOML: {e}") from None
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = {
            "network": self.network,
            "data": self.data,
            "prior": self.prior,
            "guide": self.guide,
            "fit": self.fit,
            "collapse": self.collapse,
        }
        if self.method:
            out = {k: v for k, v in out.items() if k not in NOT_WITH_METHOD}
            out["method"] = self.method
        if self.pretrain:
            out["pretrain"] = self.pretrain
        if self.budget:
            out["budget"] = self.budget
        return out

    def validate(self) -> None:
        """Build the cheap objects (prior, network) once to catch bad hyper-parameters early."""
        self.build_prior()
        self._validate_start()
        if self.method:
            self._validate_method()
        f = self.fit
        for k in ("epochs", "batch_size", "log_every"):
            if (
                not isinstance(f[k], int)
                or isinstance(f[k], bool)
                or f[k] < (0 if k == "epochs" else 1)
            ):
                raise SpecError(
                    f"{self.source}: [fit] {k} must be a positive integer, got {f[k]!r}"
                )
        rd = f["remove_dead"]
        if not isinstance(rd, bool) and not (isinstance(rd, int) and rd >= 1):
            raise SpecError(
                f"{self.source}: [fit] remove_dead must be true, false or a number of steps "
                f">= 1, got {rd!r}"
            )
        if not isinstance(f["lr"], (int, float)) or not f["lr"] > 0:
            raise SpecError(f"{self.source}: [fit] lr must be a number > 0, got {f['lr']!r}")
        self._validate_fit_options()
        _layers(self.prior.get("layers"), self.source)
        self._validate_loader_keys()
        c = self.collapse
        keep = c.get("keep")
        if keep is not None and not (
            isinstance(keep, (int, float)) and not isinstance(keep, bool) and 0 < keep <= 1
        ):
            raise SpecError(
                f"{self.source}: [collapse] keep must be a fraction in (0, 1], got {keep!r}"
            )
        threshold = c.get("threshold")
        if threshold is not None and (
            not isinstance(threshold, (int, float)) or isinstance(threshold, bool)
        ):
            raise SpecError(
                f"{self.source}: [collapse] threshold must be a number, got {threshold!r}"
            )
        if c.get("scope", "global") not in ("global", "layer"):
            raise SpecError(
                f"{self.source}: [collapse] scope must be 'global' or 'layer', got {c['scope']!r}"
            )
        if not isinstance(c.get("by", ""), str):
            raise SpecError(f"{self.source}: [collapse] by must be a string, got {c['by']!r}")
        if self.budget:
            self._validate_budget()

    def _validate_budget(self) -> None:
        """``[budget]``: its keys, and that nothing else decides the network's size."""
        if self.method:
            raise SpecError(
                f"{self.source}: [method] and [budget] cannot go together: a baseline prunes "
                "to its own [method] keep (no prior whose strength a fit could steer); drop "
                "one of them"
            )
        if self.collapse:
            key = sorted(self.collapse)[0]
            raise SpecError(
                f"{self.source}: [collapse] {key} and [budget] cannot go together: the budget "
                "decides the cut (collapse to the budget); drop [collapse] or [budget]"
            )
        check_budget_section(self.budget, self.source, self.build_prior())

    def _validate_start(self) -> None:
        """``[pretrain]``, ``[network] pretrained``, and a jackpot's need for one of them."""
        if self.pretrain:
            check_pretrain(self.pretrain, self.source)
        path = self.network.get("pretrained")
        if path is not None:
            check_pretrained_path(path, self.source)
            if self.pretrain:
                raise SpecError(
                    f"{self.source}: [network] pretrained and [pretrain] cannot go together: "
                    "load saved weights or train them here, not both"
                )
        if (
            self.prior.get("name") == "jackpot"
            and not self.pretrain
            and path is None
            and not isinstance(self.prior.get("pretrained"), str)
        ):
            raise SpecError(
                f"{self.source}: [prior] jackpot searches a mask over pre-trained weights: add "
                "a [pretrain] section (e.g. epochs = 5) or [network] pretrained = "
                '"path/to/saved/weights"'
            )

    def _validate_method(self) -> None:
        check_method(self.method, self.source)
        for key, unused in UNUSED_FIT.items():
            if self.fit[key] != unused:
                raise SpecError(
                    f"{self.source}: [fit] {key} is not used by a [method] run (no sample "
                    f"sites, no checkpoints during its fits); remove it"
                )

    def _validate_fit_options(self) -> None:
        """The ``[fit]`` keys that ``fit`` would otherwise reject only once it has started."""
        f, where = self.fit, f"{self.source}: [fit]"
        if not _is_int(f["seed"]):
            raise SpecError(f"{where} seed must be an integer, got {f['seed']!r}")
        if f["checkpoint_every"] is not None and not (
            _is_int(f["checkpoint_every"]) and f["checkpoint_every"] >= 1
        ):
            raise SpecError(
                f"{where} checkpoint_every must be a positive integer, "
                f"got {f['checkpoint_every']!r}"
            )
        if not _is_number(f["weight_decay"]) or not 0 <= f["weight_decay"] < float("inf"):
            raise SpecError(
                f"{where} weight_decay must be a number >= 0, got {f['weight_decay']!r}"
            )
        role_lr = f["role_lr"]
        if role_lr is not None and not (
            isinstance(role_lr, dict)
            and all(_is_number(v) and 0 < v < float("inf") for v in role_lr.values())
        ):
            raise SpecError(
                f"{where} role_lr must be a table of learning rates > 0, got {role_lr!r}"
            )
        if not isinstance(f["optimizer"], str) or f["optimizer"] not in OPTIMIZERS:
            raise SpecError(
                f"{where} optimizer must be one of {sorted(OPTIMIZERS)}, got {f['optimizer']!r}"
            )
        if f["loss"] not in LOSSES:
            raise SpecError(f"{where} loss must be one of {list(LOSSES)}, got {f['loss']!r}")
        try:
            probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            make_schedule(probe, f["schedule"], 1)
        except (TypeError, ValueError):
            raise SpecError(
                f'{where} schedule must be "constant" or "cosine", got {f["schedule"]!r}'
            ) from None
        device = f["device"]
        if device is not None:
            try:
                torch.device(device)
            except (RuntimeError, TypeError, ValueError):
                raise SpecError(
                    f"{where} device must be a device name (cpu, cuda, cuda:1, ...), got {device!r}"
                ) from None

    def _validate_loader_keys(self) -> None:
        augment, workers = self.data.get("augment", []), self.data.get("workers", 0)
        if not isinstance(augment, list) or any(a not in AUGMENTATIONS for a in augment):
            raise SpecError(
                f"{self.source}: [data] augment must be a list of {list(AUGMENTATIONS)}, "
                f"got {augment!r}"
            )
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise SpecError(
                f"{self.source}: [data] workers must be an integer >= 0, got {workers!r}"
            )

    # --- builders ---------------------------------------------------------------------
    def build_prior(self):
        cfg = {k: v for k, v in self.prior.items() if k != "layers"}
        try:
            return prior_from_config(cfg)
        except (TypeError, ValueError) as e:
            raise SpecError(f"{self.source}: [prior] {e}") from None

    def build_network(self, *, pretrained: bool = True) -> nn.Module:
        """The network with its initial weights drawn from ``[fit] seed`` (the global RNG
        is left as it was): the same spec always starts from the same weights. With
        ``[network] pretrained`` (and ``pretrained=True``) the saved weights are loaded.

        :raises CheckpointError: when the pretrained file is missing or does not fit.
        """
        cfg = dict(self.network)
        name = cfg.pop("name")
        path = cfg.pop("pretrained", None)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.fit["seed"]))
                network = build_network(name, **cfg)
        except (TypeError, ValueError) as e:
            raise SpecError(f"{self.source}: [network] {e}") from None
        if path is not None and pretrained:
            load_weights(network, path, f"{self.source}: [network] pretrained")
        return network

    def network_config(self) -> dict[str, Any]:
        """``[network]`` without ``pretrained``: what rebuilds the architecture."""
        return {k: v for k, v in self.network.items() if k != "pretrained"}

    def build_data(self, **overrides: Any) -> Dataset:
        cfg = {k: v for k, v in {**self.data, **overrides}.items() if k not in LOADER_KEYS}
        name = cfg.pop("name")
        try:
            return get_dataset(name, **cfg)
        except DataError:  # the data files themselves, not the spec
            raise
        except (TypeError, ValueError) as e:
            raise SpecError(f"{self.source}: [data] {e}") from None

    def training_data(self, data: Dataset, world: int = 1) -> Any:
        """What ``fit`` trains on: the in-memory data set, or -- with ``[data] augment`` --
        a loader of augmented batches of ``batch_size / world`` examples per process (so
        that ``[fit] batch_size`` is the global batch either way)."""
        augment = self.data.get("augment") or []
        if not augment:
            return data
        try:
            return augmented_loader(
                data.train,
                augment,
                batch_size=max(1, self.fit["batch_size"] // world),
                workers=self.data.get("workers", 0),
                pin_memory=str(self.fit.get("device") or "").startswith("cuda"),
            )
        except ValueError as e:
            raise SpecError(f"{self.source}: [data] {e}") from None

    def build_net(self, network: nn.Module | None = None) -> BayesianNet:
        """``sparsify(network, prior)``; for a ``[method]`` spec the flat ``Dense`` prior over
        the layers the method prunes (its ``layer_names``)."""
        module = network if network is not None else self.build_network()
        if self.method:
            layers = method_layers(self.method, module, self.source)
        else:
            layers = _layers(self.prior.get("layers"), self.source)
        try:
            return sparsify(module, self.build_prior(), layers)
        except (TypeError, ValueError) as e:
            raise SpecError(f"{self.source}: [prior] {e}") from None

    def build_guide(self, net: BayesianNet) -> Guide:
        cfg = dict(self.guide) or {"name": net.prior.default_guide}
        try:
            return guide_from_config(net, cfg)
        except (TypeError, ValueError) as e:
            raise SpecError(f"{self.source}: [guide] {e}") from None

    def fit_kwargs(self) -> dict[str, Any]:
        """``fit``'s keyword arguments: ``[fit]``, and with ``[budget]`` a new
        ``budget=BudgetControl(...)``."""
        kw = {k: v for k, v in self.fit.items()}
        if self.budget:
            kw["budget"] = control_of(self.budget)
        return kw

    def collapse_kwargs(self) -> dict[str, Any]:
        """``collapse``'s keyword arguments: ``[collapse]``, or ``budget=Budget(...)``."""
        if self.budget:
            return {"budget": budget_of(self.budget)}
        return dict(self.collapse)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
