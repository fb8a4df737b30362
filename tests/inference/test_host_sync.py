"""No host synchronisation inside the step loop, for every prior and guide.

Every device-to-host read in PyTorch goes through one of a few ATen ops (``.item()``,
``float(t)``, ``bool(t)`` and a tensor passed where a Python number is expected all call
``_local_scalar_dense``; ``nonzero`` must read its output size). A ``TorchDispatchMode``
sees them all, including those inside C++ argument parsing, so the test counts them over a
whole fit: twice the steps must give the same count (the syncs are per log window and per
epoch, never per step). On CUDA the same fit also runs under
``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bayesprune import fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.guides import MAP, MeanField
from bayesprune.priors import HALO, UnitGates

SYNC_OPS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.equal.default,
}


class CountSyncs(TorchDispatchMode):
    """Counts the ATen ops that read a value from the device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_counter_sees_syncs_inside_cpp_argument_parsing():
    a, v = torch.randn(3), torch.tensor(2.0)
    with CountSyncs() as c:
        torch.addcmul(a, a, a, value=v)  # a 0-dim tensor read as a Python number
        a.nonzero()
    assert len(c.ops) == 2


VARIANTS = {
    "halo-map": lambda net: MAP(net),
    "halo-mean-field": lambda net: MeanField(net),
    "halo-per-unit": lambda net: MAP(net),
    "gates": lambda net: None,  # the prior's default guide
}


def _prior(variant: str):
    if variant == "gates":
        return UnitGates()
    return HALO(1e-3, 1e-3, per="unit" if variant == "halo-per-unit" else "weight")


def _syncs(variant: str, n_train: int, device: str = "cpu") -> int:
    torch.manual_seed(0)
    data = synthetic_classification(n_train, 16, 0, input_shape=(8,), n_classes=3, seed=0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    net = sparsify(module, _prior(variant), example_input=torch.zeros(1, 8))
    with CountSyncs() as c:
        fit(
            net,
            data,
            VARIANTS[variant](net),
            epochs=1,
            batch_size=16,
            log_every=1000,
            progress=False,
            device=device,
        )
    return len(c.ops)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_host_sync_per_step(variant):
    few, many = _syncs(variant, 16 * 5), _syncs(variant, 16 * 15)
    assert few == many, f"{many - few} more device reads for 10 more steps"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_host_sync_per_step_on_cuda(variant):
    few, many = _syncs(variant, 16 * 5, "cuda"), _syncs(variant, 16 * 15, "cuda")
    assert few == many
    # the step loop alone, under CUDA's own sync detector
    from bayesprune.inference.loop import cuda_sync_check

    with cuda_sync_check():
        _syncs(variant, 16 * 5, "cuda")
