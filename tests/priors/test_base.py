"""The extension points are abstract: an incomplete prior, guide or likelihood is refused
when it is built, not halfway through a fit."""

import pytest

from bayesprune.guides.base import Guide
from bayesprune.nn.likelihoods import Likelihood
from bayesprune.priors import Prior


@pytest.mark.parametrize("base", [Prior, Likelihood])
def test_incomplete_subclasses_cannot_be_built(base):
    incomplete = type("Incomplete", (base,), {})
    with pytest.raises(TypeError, match="abstract"):
        incomplete()


def test_an_incomplete_guide_cannot_be_built():
    incomplete = type("Incomplete", (Guide,), {})
    with pytest.raises(TypeError, match="abstract"):
        incomplete(None)
