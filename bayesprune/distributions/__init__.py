"""Distributions the priors need beyond Pyro's own."""

from bayesprune.distributions.flattening import (
    Flattening,
    gate_cost,
    log_normalizer,
    optimal_prior_prob,
)

__all__ = ["Flattening", "gate_cost", "log_normalizer", "optimal_prior_prob"]
