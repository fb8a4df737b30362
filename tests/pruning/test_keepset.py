"""KeepSet: what it accepts, how it normalises units, and what it counts."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesprune.pruning import KeepSet

# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask",
    [
        torch.ones(2, 3),  # float
        torch.ones(2, 3, dtype=torch.long),  # integer 0/1
        [[True, False]],  # not a tensor
        np.ones((2, 3), dtype=bool),  # numpy, not torch
    ],
    ids=["float", "long", "list", "numpy"],
)
def test_weight_mask_must_be_a_bool_tensor(mask):
    with pytest.raises(TypeError, match="weight_mask must be a bool tensor"):
        KeepSet(weight_mask=mask)


@pytest.mark.parametrize(
    ("units", "n_units"),
    [([0, 3], 3), ([-1, 0], 3), ([-1], None), ([5], 5)],
)
def test_units_out_of_range(units, n_units):
    with pytest.raises(ValueError, match="out of range"):
        KeepSet(units=torch.tensor(units), n_units=n_units)


@pytest.mark.parametrize(
    "units",
    [torch.tensor([0.0, 2.0]), torch.tensor([True, False, True]), [0.5]],
    ids=["float", "bool-mask", "float-list"],
)
def test_units_must_be_integer_indices(units):
    """A boolean mask passed as ``units`` would silently become units [0, 1]."""
    with pytest.raises(TypeError, match="integer unit indices"):
        KeepSet(units=units, n_units=3)


@pytest.mark.parametrize("n_units", [0, -2, 2.5, True, "3"])
def test_n_units_must_be_a_positive_integer(n_units):
    with pytest.raises(ValueError, match="n_units must be a positive integer"):
        KeepSet(units=torch.tensor([0]), n_units=n_units)


def test_units_are_sorted_unique_long_and_flat():
    k = KeepSet(units=torch.tensor([[4, 1], [1, 0]], dtype=torch.int32), n_units=5)
    assert k.units.dtype == torch.long
    assert k.units.tolist() == [0, 1, 4]


@pytest.mark.parametrize(
    "units", [[3, 1, 1], (3, 1), np.array([3, 1]), torch.tensor([3, 1, 3])], ids=str
)
def test_units_accept_sequences_and_arrays(units):
    assert KeepSet(units=units, n_units=4).units.tolist() == [1, 3]


def test_empty_units_is_allowed_and_counts_zero():
    k = KeepSet(units=[], n_units=3)
    assert k.units.dtype == torch.long
    assert (k.n_kept, k.fraction_kept) == (0, 0.0)


def test_numpy_integer_n_units_is_accepted():
    k = KeepSet(units=[0], n_units=np.int64(4))
    assert k.n_units == 4 and type(k.n_units) is int


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 40), data=st.data())
def test_units_normalisation_property(n, data):
    raw = data.draw(st.lists(st.integers(0, n - 1), max_size=60))
    k = KeepSet(units=torch.tensor(raw, dtype=torch.long), n_units=n)
    assert k.units.tolist() == sorted(set(raw))
    assert k.n_kept == len(set(raw))
    assert k.fraction_kept == pytest.approx(len(set(raw)) / n)


# --- counting -------------------------------------------------------------------------


def test_n_kept_and_fraction_for_a_weight_mask():
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[0, :3] = True
    mask[2, 4] = True
    k = KeepSet(weight_mask=mask)
    assert k.n_kept == 4
    assert k.fraction_kept == pytest.approx(4 / 20)


def test_n_kept_and_fraction_for_units():
    k = KeepSet(units=torch.tensor([0, 2, 7]), n_units=8)
    assert k.n_kept == 3
    assert k.fraction_kept == pytest.approx(3 / 8)


def test_fraction_of_units_needs_n_units():
    k = KeepSet(units=torch.tensor([0, 2]))
    assert k.n_kept == 2
    with pytest.raises(ValueError, match="n_units"):
        _ = k.fraction_kept


def test_empty_keepset_cannot_count():
    k = KeepSet()
    with pytest.raises(ValueError, match="neither units nor weight_mask"):
        _ = k.n_kept
    with pytest.raises(ValueError, match="neither units nor weight_mask"):
        _ = k.fraction_kept


def test_values_default_is_a_fresh_dict():
    a, b = KeepSet(), KeepSet()
    a.values["weight"] = torch.zeros(1)
    assert b.values == {}


def test_zeroed_units_must_be_kept_units():
    k = KeepSet(units=torch.tensor([0, 2]), n_units=3, zeroed=torch.tensor([2]))
    assert k.zeroed.tolist() == [2] and k.n_kept == 2
    with pytest.raises(ValueError, match="zeroed must be a subset"):
        KeepSet(units=torch.tensor([0, 2]), n_units=3, zeroed=torch.tensor([1]))
