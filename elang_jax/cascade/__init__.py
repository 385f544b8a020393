"""Model cascades (E-LANG, TangoBERT, CascadeBERT) over the compaction core."""

from elang_jax.cascade._cascade import Cascade, CascadeOutput, Tier, TierConfig
from elang_jax.cascade._dar import cascadebert_loss, difficulty_ranking_loss
from elang_jax.cascade._operating_points import (
    calibrate_thresholds,
    cascade_candidates,
    simulate,
)

__all__ = [
    "Cascade",
    "CascadeOutput",
    "Tier",
    "TierConfig",
    "calibrate_thresholds",
    "cascadebert_loss",
    "difficulty_ranking_loss",
    "cascade_candidates",
    "simulate",
]
