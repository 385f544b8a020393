"""CascadeBERT's difficulty-aware objective.

L = sum_i CE(member_i) + lambda * DAR, where DAR is a margin-ranking loss on the small
model's confidence: for every easy example e in the batch, one hard example h is drawn
uniformly (with replacement) and max(0, margin - (c(e) - c(h))) is paid, so that easy
examples end at least `margin` more confident than hard ones. Difficulty labels come from
the small model's own behaviour (see train/difficulty_labels.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int


def difficulty_ranking_loss(
    confidence: Float[Array, " b"],
    hard: Bool[Array, " b"],
    key: jax.Array,
    margin: float = 0.5,
    valid: Bool[Array, " b"] | None = None,
) -> Float[Array, ""]:
    """Mean hinge over easy examples, each paired with a random hard one from the batch.

    Zero when the batch holds no easy or no hard example.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    valid = jnp.ones_like(hard, bool) if valid is None else valid.astype(bool)
    hard = hard.astype(bool) & valid
    easy = ~hard & valid
    n_hard = hard.sum()
    # Draw a hard partner for every row: uniform over the hard rows via a categorical on
    # log-weights (-inf on non-hard rows); rows without any hard partner are masked below.
    logits = jnp.where(hard, 0.0, -jnp.inf)
    logits = jnp.where(n_hard > 0, logits, jnp.zeros_like(logits))
    partner = jax.random.categorical(key, logits, shape=hard.shape)
    hinge = jnp.maximum(0.0, margin - (confidence - confidence[partner]))
    use = easy & (n_hard > 0)
    return jnp.where(use, hinge, 0.0).sum() / jnp.maximum(use.sum(), 1)


def cascadebert_loss(
    member_logits: list[Float[Array, "b c"]],
    labels: Int[Array, " b"],
    hard: Bool[Array, " b"],
    key: jax.Array,
    *,
    margin: float = 0.5,
    weight: float = 0.5,
    valid: Bool[Array, " b"] | None = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Cross-entropy of every member plus `weight` times DAR on the first (smallest) member's
    max-softmax confidence. Returns (loss, parts)."""
    valid = jnp.ones_like(labels, bool) if valid is None else valid.astype(bool)
    denom = jnp.maximum(valid.sum(), 1)
    ces = [
        jnp.where(valid, optax.softmax_cross_entropy_with_integer_labels(lg, labels), 0.0).sum()
        / denom
        for lg in member_logits
    ]
    confidence = jax.nn.softmax(member_logits[0].astype(jnp.float32), -1).max(-1)
    dar = difficulty_ranking_loss(confidence, hard, key, margin, valid)
    total = sum(ces) + weight * dar
    return total, {"ce": jnp.stack(ces), "dar": dar}
