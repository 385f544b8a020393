"""Confidence scores for routing (higher = more confident; keep when score >= threshold)."""

from elang_jax.routing._scores import (
    Score,
    check_temperature,
    energy_score,
    margin_score,
    max_prob_score,
    neg_entropy_score,
    score,
    softmax_lse_score,
)

__all__ = [
    "Score",
    "check_temperature",
    "energy_score",
    "margin_score",
    "max_prob_score",
    "neg_entropy_score",
    "score",
    "softmax_lse_score",
]
