"""Confidence scores that decide whether a cheaper model's answer is kept.

Every score is computed in float32 whatever the logits' dtype, and is oriented so that
HIGHER MEANS MORE CONFIDENT: an example is kept (not escalated, exits early) when
`score >= threshold`. Entropy is therefore returned negated.
"""

from __future__ import annotations

import enum
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.typing import ArrayLike
from jaxtyping import Array, Float

# Scores take NumPy logits (offline calibration) as well as JAX ones (the compiled steps).
Logits = Float[np.ndarray | Array, "... c"]

# Scores are float32: a temperature below about 1.2e-38 is 0 or a denormal there (which
# XLA flushes to zero, so z / T is NaN), and T * log(c) overflows near 3e38. Inside this
# range every score is finite for finite logits, eagerly and under `jit` alike.
MIN_TEMPERATURE = 1e-30
MAX_TEMPERATURE = 1e30


def _valid(t) -> bool:
    return bool(np.all((t >= MIN_TEMPERATURE) & (t <= MAX_TEMPERATURE)))


def check_temperature(value: Any, name: str = "temperature", where: str = "") -> float:
    """`value` as a float if it is a finite number > 0; else a ValueError naming the field.

    For config fields (`TierConfig.temperature` and the like). An infinite temperature
    flattens every softmax and makes every energy score inf, so nothing would ever escalate
    or exit; zero, negative and NaN ones have no meaning. Finite means within
    [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`] (1e-30 to 1e30), where float32 scores stay finite.

    Args:
      value: the temperature.
      name: the field's name, for the message.
      where: a prefix for the message, e.g. "tier 'swift': ".
    """
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}{name} must be > 0 and finite, got {name}={value!r}") from None
    if not _valid(t):
        raise ValueError(
            f"{where}{name} must be > 0 and finite (within [{MIN_TEMPERATURE:g}, "
            f"{MAX_TEMPERATURE:g}]), got {name}={value!r}"
        )
    return t


def _check_temperature(temperature) -> jax.Array | float:
    """Validates a score function's temperature argument.

    A Python or NumPy number, or a concrete array, must be finite and > 0, within
    [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`] (ValueError otherwise). A traced temperature
    cannot raise: where it is outside that range the score is NaN (see `_poison`), which
    never reaches a threshold (`NaN >= t` is false), so an invalid temperature escalates
    (or never exits early) rather than deciding at random.
    """
    if isinstance(temperature, Tracer):
        return temperature
    t = np.asarray(temperature)
    if not np.issubdtype(t.dtype, np.number) or np.iscomplexobj(t):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not _valid(t):
        raise ValueError(
            f"temperature must be a positive number (finite, within [{MIN_TEMPERATURE:g}, "
            f"{MAX_TEMPERATURE:g}]), got {temperature!r}"
        )
    return temperature


def _poison(value: jax.Array, temperature) -> jax.Array:
    """NaN where a traced temperature is out of range (a no-op for checked ones)."""
    if not isinstance(temperature, Tracer):
        return value
    t = jnp.asarray(temperature, jnp.float32)
    return jnp.where((t >= MIN_TEMPERATURE) & (t <= MAX_TEMPERATURE), value, jnp.nan)


def _scaled(logits, temperature) -> jax.Array:
    """(z - max z) / T in float32: every entry <= 0 and the largest exactly 0.

    Dividing the raw logits by a tiny temperature overflows float32 (z / 1e-38 = inf, and
    inf - inf = NaN inside softmax); shifting first keeps every score finite for any T > 0
    and changes no softmax.
    """
    z = jnp.asarray(logits, jnp.float32)
    z = z - jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    return z / jnp.asarray(temperature, jnp.float32)


def energy_score(logits: Logits, temperature: ArrayLike = 1.0) -> Float[Array, ...]:
    """E-LANG's negative free energy -F = T * logsumexp(z / T) over the last axis, float32.

    High for confident, in-distribution inputs. Computed as max z + T * logsumexp((z - max z)
    / T), equal in exact arithmetic and finite for every finite temperature > 0.
    """
    temperature = _check_temperature(temperature)
    z = jnp.asarray(logits, jnp.float32)
    t = jnp.asarray(temperature, jnp.float32)
    # stopped like the shift inside `_scaled`: the gradient is then softmax(z / T), exactly
    top = jax.lax.stop_gradient(jnp.max(z, axis=-1))
    # the shifted logsumexp lies in [0, log c]: its product with a tiny T cannot overflow
    out = top + t * jax.nn.logsumexp(_scaled(z, temperature), axis=-1)
    return _poison(out, temperature)


def softmax_lse_score(logits: Logits, temperature: ArrayLike = 1.0):
    """The released E-LANG code's score: logsumexp of softmax probabilities (T unused there).

    For two classes it lies in [log 2 + 0.5, log(e + 1)] and rises with the max probability,
    so it is max-prob routing in disguise; kept for parity with published thresholds.
    """
    temperature = _check_temperature(temperature)
    p = jax.nn.softmax(_scaled(logits, temperature), axis=-1)
    return _poison(jax.nn.logsumexp(p, axis=-1), temperature)


def max_prob_score(logits: Logits, temperature: ArrayLike = 1.0):
    """Largest softmax probability (TangoBERT, CascadeBERT, calibrated exits)."""
    temperature = _check_temperature(temperature)
    p = jax.nn.softmax(_scaled(logits, temperature), axis=-1)
    return _poison(jnp.max(p, -1), temperature)


def neg_entropy_score(logits: Logits, temperature: ArrayLike = 1.0):
    """Negative entropy of the softmax (DeeBERT exits when entropy < S, i.e. -H > -S)."""
    temperature = _check_temperature(temperature)
    logp = jax.nn.log_softmax(_scaled(logits, temperature), axis=-1)
    # p log p with p = 0 is 0 (log p may be -inf for a tiny temperature: 0 * -inf = NaN)
    plogp = jnp.where(logp > -jnp.inf, jnp.exp(logp) * logp, 0.0)
    return _poison(jnp.sum(plogp, axis=-1), temperature)


def margin_score(logits: Logits, temperature: ArrayLike = 1.0):
    """Top-1 minus top-2 softmax probability (CALM's softmax_diff)."""
    temperature = _check_temperature(temperature)
    p = jax.nn.softmax(_scaled(logits, temperature), axis=-1)
    top2 = jax.lax.top_k(p, 2)[0]
    return _poison(top2[..., 0] - top2[..., 1], temperature)


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


def score(kind: Score | str, logits: Logits, temperature: ArrayLike = 1.0) -> Float[Array, ...]:
    """Dispatches to the score named `kind` (see `Score`)."""
    try:
        kind = Score(kind)
    except ValueError:
        raise ValueError(
            f"unknown score {kind!r}; choose from {[s.value for s in Score]}"
        ) from None
    return _SCORES[kind](logits, temperature)
