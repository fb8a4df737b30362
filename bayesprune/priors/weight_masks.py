"""Fixed weight masks held through a fit: masked fine-tuning in the one fit loop.

:class:`HoldMasks` is a fit callback (:mod:`bayesprune.inference.callbacks`): it zeroes the
masked weights when the fit starts and again after every optimizer step, on the device,
without reading anything back to the host. The weight of a layer lives either in the
module (a layer without a sample site, e.g. under :class:`~bayesprune.priors.Dense`) or in
a MAP guide (a site that replaces the weight, real support: the guide's parameter *is* the
weight); :func:`trained_tensor` finds it.

:func:`top_magnitude_masks` is the global magnitude rule used by the baselines and by
HyperSparse: keep the ``round(keep * n)`` largest ``|w|`` over all layers together.

>>> import torch
>>> masks = top_magnitude_masks({"a": torch.tensor([3.0, -1.0]), "b": torch.tensor([0.5, -4.0])}, 0.5)
>>> masks["a"].tolist(), masks["b"].tolist()
([True, False], [False, True])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.sites import is_real


@torch.no_grad()
def top_magnitude_masks(weights: dict[str, Tensor], keep: float) -> dict[str, Tensor]:
    """Boolean masks keeping the ``round(keep * n)`` largest magnitudes over all tensors.

    :param weights: tensors by name (any shapes, one device).
    :param keep: fraction kept, in ``(0, 1]``.
    :raises ValueError: when ``keep`` is not in ``(0, 1]`` or ``weights`` is empty.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ConfigError(f"top_magnitude_masks: keep must be in (0, 1], got {keep!r}")
    if not weights:
        raise ConfigError("top_magnitude_masks: weights is empty")
    flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
    k = round(keep * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    out, offset = {}, 0
    for name, w in weights.items():
        out[name] = mask[offset : offset + w.numel()].reshape(w.shape)
        offset += w.numel()
    return out


def trained_tensor(net: Any, guide: Any, param: str) -> Tensor:
    """The trained tensor that holds the module parameter ``param`` (e.g. ``"fc1.weight"``)
    in a fit of ``net`` with ``guide``: the MAP guide's parameter of the site replacing it,
    else the module's own parameter.

    :raises ValueError: when ``param`` does not exist, or a site replaces it under a guide
        whose parameter is not the value itself (e.g. mean-field: zeroing its loc would not
        zero the draws).
    """
    site = next((s for s in net.sites if s.replaces == param), None)
    if site is None:
        try:
            return net.module.get_parameter(param)
        except AttributeError:
            raise ConfigError(f"masks: the network has no parameter {param!r}") from None
    params = guide.site_parameters(site)
    if getattr(guide, "name", None) != "map" or not is_real(site.support) or len(params) != 1:
        raise ConfigError(
            f"masks: {param!r} is the site {site.name!r} of a {type(guide).__name__} guide; "
            "masks can be held only under a MAP guide"
        )
    return params[0]


class HoldMasks:
    """Fit callback: the parameter entries outside ``masks`` stay exactly 0 for the whole fit.

    :param masks: ``{parameter name: bool tensor shaped like it}`` (True = kept), e.g.
        ``{"fc1.weight": mask}``; names are the module's (``net.module``).
    """

    def __init__(self, masks: dict[str, Tensor]) -> None:
        for name, m in masks.items():
            if not isinstance(m, Tensor) or m.dtype != torch.bool:
                raise ConfigError(f"HoldMasks: masks[{name!r}] must be a bool tensor")
        self.masks = dict(masks)
        self._held: list[tuple[Tensor, Tensor]] = []

    @torch.no_grad()
    def attach(self, state: Any) -> None:
        """Find the tensors holding the masked weights, zero them, remember them."""
        self._held = []
        for name, m in self.masks.items():
            w = trained_tensor(state.net, state.guide, name)
            if tuple(m.shape) != tuple(w.shape):
                raise ConfigError(
                    f"HoldMasks: mask for {name!r} has shape {tuple(m.shape)}, "
                    f"the parameter {tuple(w.shape)}"
                )
            mask = m.to(device=w.device, dtype=w.dtype)
            w.mul_(mask)
            self._held.append((w, mask))

    def on_fit_start(self, state: Any) -> None:
        self.attach(state)

    @torch.no_grad()
    def on_step_end(self, state: Any) -> None:
        for w, mask in self._held:
            w.mul_(mask)
