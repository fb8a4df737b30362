"""Fuzzing the TOML spec reader: whatever the file holds, ``Spec.load`` returns a valid
:class:`Spec` or raises :class:`SpecError` naming the file -- never another exception.

Documents are drawn three ways: random bytes, random text, and TOML built from the spec's
own sections and keys (prior hyper-parameters read off the priors' signatures) with values
of every TOML type, so that most examples get past the parser into validation.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesprune.budget import METRICS
from bayesprune.cli.budget_spec import CONTROL_KEYS
from bayesprune.cli.spec import COLLAPSE_KEYS, FIT_DEFAULTS, LOADER_KEYS, SECTIONS, Spec
from bayesprune.errors import SpecError
from bayesprune.guides import _REGISTRY as GUIDES
from bayesprune.priors import PRIORS
from tests.helpers import toml_document

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

PRIOR_KEYS = sorted(
    {
        p
        for cls in PRIORS.values()
        for p in inspect.signature(cls.__init__).parameters
        if p not in ("self", "args", "kwargs")
    }
    | {"layers"}
)
KEYS: dict[str, list[str]] = {
    "network": ["name", "width", "num_classes", "depth"],
    "data": ["name", "n_train", "n_val", "n_test", "input_shape", "n_classes", *LOADER_KEYS],
    "prior": ["name", *PRIOR_KEYS],
    "guide": ["name", "init_scale"],
    "fit": sorted(FIT_DEFAULTS),
    "collapse": list(COLLAPSE_KEYS),
    "budget": [*METRICS, *CONTROL_KEYS],
}
NAMES = {
    "network": ["lenet300", "lenet5", "resnet20"],
    "data": ["synthetic", "fashion-mnist"],
    "prior": sorted(PRIORS),
    "guide": sorted(GUIDES),
}


scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0.0, max_value=1.0),
    st.text(max_size=12),
    st.sampled_from(["weight", "unit", "global", "layer", "cosine", "adam", "cpu", "crop"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
    ),
    max_leaves=8,
)


@st.composite
def sections(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """A spec document: known sections (sometimes an unknown one), each with a usually
    valid name and some known or random keys with values of any TOML type."""
    others = [s for s in SECTIONS if s not in ("network", "prior")]
    names = ["network", "prior", *draw(st.lists(st.sampled_from(others), unique=True))]
    if draw(st.integers(0, 9)) == 0:
        names.remove(draw(st.sampled_from(names)))
    if draw(st.integers(0, 9)) == 0:
        names.append(draw(st.text(min_size=1, max_size=8)))
    doc: dict[str, dict[str, Any]] = {}
    for section in names:
        table: dict[str, Any] = {}
        if section in NAMES and draw(st.integers(0, 9)) > 0:
            table["name"] = draw(st.sampled_from(NAMES[section]))
        keys = KEYS.get(section, [])
        key = st.sampled_from(keys) if keys else st.text(min_size=1, max_size=8)
        some_key = st.one_of(key, key, key, st.text(min_size=1, max_size=8))
        for k in draw(st.lists(some_key, max_size=4)):
            table.setdefault(k, draw(values))
        doc[section] = table
    return doc


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "spec.toml"


def load_or_spec_error(path) -> Spec | None:
    try:
        spec = Spec.load(path)
    except SpecError as e:
        assert str(path) in str(e), e  # the message names the file
        return None
    assert isinstance(spec, Spec)
    return spec


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(spec_path, data):
    spec_path.write_bytes(data)
    load_or_spec_error(spec_path)


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text(spec_path, text):
    spec_path.write_text(text, encoding="utf-8")
    load_or_spec_error(spec_path)


@FUZZ
@given(doc=sections())
def test_random_spec_documents(spec_path, doc):
    spec_path.write_text(toml_document(doc), encoding="utf-8")
    spec = load_or_spec_error(spec_path)
    if spec is not None:  # a valid spec survives its own round trip
        again = Spec.from_dict(spec.to_dict(), source=spec.source)
        assert again.to_dict() == spec.to_dict()


@FUZZ
@given(doc=sections(), cut=st.integers(min_value=0, max_value=400))
def test_truncated_spec_documents(spec_path, doc, cut):
    text = toml_document(doc)
    spec_path.write_text(text[: cut % (len(text) + 1)], encoding="utf-8")
    load_or_spec_error(spec_path)


def test_the_document_builder_writes_toml_that_parses_back():
    import tomllib

    doc = {"prior": {"name": "halo", "a b": [1, 2.5, "x\n\x7f"], "t": {"k": True}}}
    assert tomllib.loads(toml_document(doc)) == doc
