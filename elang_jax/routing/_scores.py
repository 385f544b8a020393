"""Confidence scores that decide whether a cheaper model's answer is kept.

Every score is computed in float32 whatever the logits' dtype, and is oriented so that
HIGHER MEANS MORE CONFIDENT: an example is kept (not escalated, exits early) when
`score >= threshold`. Entropy is therefore returned negated.
"""

from __future__ import annotations

import enum
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _check_temperature(temperature) -> None:
    if isinstance(temperature, (int, float)):
        if math.isnan(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature}")


def energy_score(logits: Float[Array, "... c"], temperature: float = 1.0) -> Float[Array, ...]:
    """E-LANG's negative free energy -F = T * logsumexp(z / T) over the last axis, float32.

    High for confident, in-distribution inputs.
    """
    _check_temperature(temperature)
    z = jnp.asarray(logits, jnp.float32)
    return temperature * jax.nn.logsumexp(z / temperature, axis=-1)


def softmax_lse_score(logits: Float[Array, "... c"], temperature: float = 1.0):
    """The released E-LANG code's score: logsumexp of softmax probabilities (T unused there).

    For two classes it lies in [log 2 + 0.5, log(e + 1)] and rises with the max probability,
    so it is max-prob routing in disguise; kept for parity with published thresholds.
    """
    _check_temperature(temperature)
    p = jax.nn.softmax(jnp.asarray(logits, jnp.float32) / temperature, axis=-1)
    return jax.nn.logsumexp(p, axis=-1)


def max_prob_score(logits: Float[Array, "... c"], temperature: float = 1.0):
    """Largest softmax probability (TangoBERT, CascadeBERT, calibrated exits)."""
    _check_temperature(temperature)
    return jnp.max(jax.nn.softmax(jnp.asarray(logits, jnp.float32) / temperature, axis=-1), -1)


def neg_entropy_score(logits: Float[Array, "... c"], temperature: float = 1.0):
    """Negative entropy of the softmax (DeeBERT exits when entropy < S, i.e. -H > -S)."""
    _check_temperature(temperature)
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(logp) * logp, axis=-1)


def margin_score(logits: Float[Array, "... c"], temperature: float = 1.0):
    """Top-1 minus top-2 softmax probability (CALM's softmax_diff)."""
    _check_temperature(temperature)
    p = jax.nn.softmax(jnp.asarray(logits, jnp.float32) / temperature, axis=-1)
    top2 = jax.lax.top_k(p, 2)[0]
    return top2[..., 0] - top2[..., 1]


class Score(enum.StrEnum):
    ENERGY = "energy"
    SOFTMAX_LSE = "softmax_lse"
    MAX_PROB = "max_prob"
    ENTROPY = "entropy"
    MARGIN = "margin"


_SCORES = {
    Score.ENERGY: energy_score,
    Score.SOFTMAX_LSE: softmax_lse_score,
    Score.MAX_PROB: max_prob_score,
    Score.ENTROPY: neg_entropy_score,
    Score.MARGIN: margin_score,
}


def score(kind: Score | str, logits, temperature: float = 1.0) -> Float[Array, ...]:
    """Dispatches to the score named `kind` (see `Score`)."""
    try:
        kind = Score(kind)
    except ValueError:
        raise ValueError(
            f"unknown score {kind!r}; choose from {[s.value for s in Score]}"
        ) from None
    return _SCORES[kind](logits, temperature)
