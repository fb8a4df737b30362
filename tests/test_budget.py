"""Budget: exactly one measure, a fraction in (0, 1] (or per-layer fractions of units),
parsed from the CLI's ``METRIC=FRACTION``, rebuilt from its config, equal and hashed by
value."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesprune import Budget
from bayesprune.budget import METRICS
from bayesprune.errors import ConfigError

FRACTIONS = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_subnormal=True)
LAYER = st.text(min_size=1, max_size=12)


# --- construction -----------------------------------------------------------------------
@pytest.mark.parametrize("metric", METRICS)
def test_one_field_gives_its_metric_and_fraction(metric):
    b = Budget(**{metric: 0.25})
    assert (b.metric, b.fraction, b.per_layer) == (metric, 0.25, None)
    assert b.config() == {metric: 0.25}
    assert repr(b) == f"Budget({metric}=0.25)"


def test_the_fraction_is_a_python_float_whatever_real_number_comes_in():
    for value in (1, np.float32(0.5), np.float64(0.25), Fraction(1, 4)):
        b = Budget(flops=value)
        assert type(b.fraction) is float and b.fraction == float(value)
    assert Budget(units=1).config() == {"units": 1.0}


def test_none_or_several_fields_are_refused_naming_them():
    with pytest.raises(ConfigError, match="exactly one of weights, units, params, flops; got none"):
        Budget()
    with pytest.raises(ConfigError, match="got weights and flops"):
        Budget(weights=0.1, flops=0.1)
    with pytest.raises(ConfigError, match="got weights and units and params and flops"):
        Budget(weights=0.1, units=0.1, params=0.1, flops=0.1)
    # a field given as None is not given
    assert Budget(weights=None, flops=0.5) == Budget(flops=0.5)


BAD_FRACTIONS = [
    0,
    0.0,
    -0.0,
    -0.1,
    1.5,
    1 + 1e-12,
    math.nan,
    math.inf,
    -math.inf,
    pytest.param(10**400, id="10**400"),  # too large for a float: a ConfigError all the same
    True,
    False,
    np.bool_(True),
    "0.1",
    b"0.1",
    [0.1],
    complex(0.1, 0),
]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("value", BAD_FRACTIONS, ids=repr)
def test_a_bad_fraction_is_refused_naming_the_field(metric, value):
    with pytest.raises(ConfigError, match=rf"Budget: {metric} must be a fraction .* in \(0, 1\]"):
        Budget(**{metric: value})


def test_per_layer_units():
    b = Budget(units={"fc1": 0.5, "fc2": 1})
    assert b.metric == "units"
    assert b.per_layer == {"fc1": 0.5, "fc2": 1.0}
    assert b.config() == {"units": {"fc1": 0.5, "fc2": 1.0}}
    with pytest.raises(ConfigError, match="per-layer units budget has no single fraction"):
        _ = b.fraction
    # layer names are strings: a Sequential's index given as an int names the same layer
    assert Budget(units={0: 0.5}).per_layer == {"0": 0.5}


@pytest.mark.parametrize("value", BAD_FRACTIONS, ids=repr)
def test_a_bad_per_layer_fraction_is_refused_naming_the_layer(value):
    with pytest.raises(ConfigError, match=r"Budget: units\['fc2'\] must be a fraction"):
        Budget(units={"fc1": 0.5, "fc2": value})


def test_per_layer_tables_only_for_units_and_never_empty():
    for metric in ("weights", "params", "flops"):
        with pytest.raises(
            ConfigError, match=f"only units takes per-layer fractions, not {metric}"
        ):
            Budget(**{metric: {"fc1": 0.5}})
    with pytest.raises(ConfigError, match="units per layer needs at least one layer"):
        Budget(units={})


def test_the_budget_cannot_be_changed_through_what_it_hands_out():
    table = {"fc1": 0.5}
    b = Budget(units=table)
    table["fc1"] = 0.1  # the caller's dict is copied in
    b.per_layer["fc1"] = 0.2  # and copied out
    b.config()["units"]["fc1"] = 0.3
    assert b.per_layer == {"fc1": 0.5}
    with pytest.raises(AttributeError):
        b.metric = "flops"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        b.extra = 1  # type: ignore[attr-defined]  # __slots__


# --- parse ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("flops=0.1", Budget(flops=0.1)),
        ("units = 0.25", Budget(units=0.25)),
        ("  params=1  ", Budget(params=1.0)),
        ("weights=5e-2", Budget(weights=0.05)),
        ("weights=.5", Budget(weights=0.5)),
        ("weights=+0.5", Budget(weights=0.5)),
        ("flops=0.1\n", Budget(flops=0.1)),
    ],
)
def test_parse_good(text, want):
    assert Budget.parse(text) == want


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "expected METRIC=FRACTION"),
        ("flops", "expected METRIC=FRACTION"),
        ("flops==0.1", "expected METRIC=FRACTION"),
        ("flops=0.1,units=0.2", "expected METRIC=FRACTION"),
        ("flops=0.1=0.2", "expected METRIC=FRACTION"),
        ("=0.1", "unknown measure ''"),
        ("FLOPS=0.1", "unknown measure 'FLOPS'"),
        ("macs=0.1", "unknown measure 'macs'"),
        ("flops=", "flops must be a number in"),
        ("flops=ten percent", "flops must be a number in"),
        ("flops=10%", "flops must be a number in"),
        ("units=fc1:0.5", "units must be a number in"),
        ("flops=0", r"flops must be a fraction .* got 0.0"),
        ("flops=-0", r"flops must be a fraction .* got -0.0"),
        ("flops=1.01", r"flops must be a fraction .* got 1.01"),
        ("flops=nan", r"flops must be a fraction .* got nan"),
        ("flops=inf", r"flops must be a fraction .* got inf"),
        ("flops=1_0", r"flops must be a fraction .* got 10.0"),
    ],
)
def test_parse_bad_names_what_is_wrong(text, match):
    with pytest.raises(ConfigError, match=match):
        Budget.parse(text)


@pytest.mark.parametrize("text", [None, 0.1, b"flops=0.1", ["flops=0.1"]], ids=repr)
def test_parse_takes_only_strings(text):
    with pytest.raises(ConfigError, match="expected METRIC=FRACTION"):
        Budget.parse(text)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(metric=st.sampled_from(METRICS), fraction=FRACTIONS)
def test_any_fraction_round_trips_through_parse_config_json_and_repr(metric, fraction):
    b = Budget(**{metric: fraction})
    assert b.fraction == fraction  # exactly: nothing rounded on the way in
    for again in (
        Budget.parse(f"{metric}={fraction!r}"),
        Budget.parse(f" {metric} = {fraction!r} "),
        Budget.from_config(b.config()),
        Budget.from_config(json.loads(json.dumps(b.config()))),
        eval(repr(b), {"Budget": Budget}),  # noqa: S307
    ):
        assert again == b and hash(again) == hash(b)
        assert again.fraction == fraction


@settings(max_examples=100, deadline=None)
@given(table=st.dictionaries(LAYER, FRACTIONS, min_size=1, max_size=5))
def test_any_per_layer_table_round_trips_through_config_and_json(table):
    b = Budget(units=table)
    assert b.per_layer == table
    for again in (
        Budget.from_config(b.config()),
        Budget.from_config(json.loads(json.dumps(b.config()))),
        Budget(units=dict(reversed(table.items()))),  # order does not matter
    ):
        assert again == b and hash(again) == hash(b)
        assert again.per_layer == table


@settings(max_examples=100, deadline=None)
@given(metric=st.sampled_from(METRICS), value=st.floats(allow_nan=True, allow_infinity=True))
def test_outside_the_unit_interval_parse_and_the_constructor_both_refuse(metric, value):
    if 0 < value <= 1:
        assert Budget.parse(f"{metric}={value!r}") == Budget(**{metric: value})
    else:
        for make in (lambda: Budget(**{metric: value}), lambda: Budget.parse(f"{metric}={value}")):
            with pytest.raises(ConfigError, match=f"{metric} must be a fraction"):
                make()


# --- from_config ----------------------------------------------------------------------------
def test_from_config_names_unknown_fields_and_refuses_non_tables():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['macs'\]"):
        Budget.from_config({"macs": 0.1})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['a', 'b'\]"):
        Budget.from_config({"flops": 0.1, "b": 1, "a": 2})
    with pytest.raises(ConfigError, match="got none"):
        Budget.from_config({})
    with pytest.raises(ConfigError, match="got params and flops"):
        Budget.from_config({"params": 0.1, "flops": 0.1})
    for bad in ("flops=0.1", 0.1, [("flops", 0.1)], None):
        with pytest.raises(ConfigError, match="expected a table like"):
            Budget.from_config(bad)  # type: ignore[arg-type]


# --- equality -------------------------------------------------------------------------------
def test_equality_and_hash_by_value():
    assert Budget(flops=0.5) == Budget(flops=0.5) == Budget(flops=1 / 2)
    assert Budget(flops=1) == Budget(flops=1.0)
    assert Budget(flops=0.5) != Budget(params=0.5)
    assert Budget(flops=0.5) != Budget(flops=0.25)
    assert Budget(units=0.5) != Budget(units={"fc1": 0.5})
    assert Budget(units={"a": 0.5, "b": 0.2}) == Budget(units={"b": 0.2, "a": 0.5})
    assert Budget(units={"a": 0.5}) != Budget(units={"a": 0.5, "b": 0.5})
    # not a Budget: never equal, whatever it looks like
    assert Budget(flops=0.5) != {"flops": 0.5}
    assert Budget(flops=0.5) != "flops=0.5"
    assert Budget(flops=0.5) != 0.5
    # usable as keys and in sets: equal budgets hash alike
    seen = {
        Budget(flops=0.5),
        Budget(flops=1 / 2),
        Budget(units={"a": 0.5, "b": 0.2}),
        Budget(units={"b": 0.2, "a": 0.5}),
        Budget(params=0.5),
    }
    assert len(seen) == 3
