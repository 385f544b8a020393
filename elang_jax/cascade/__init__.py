"""Model cascades (E-LANG, TangoBERT, CascadeBERT) over the compaction core."""

from elang_jax.cascade._cascade import Cascade, CascadeOutput, Tier, TierConfig, dataset_logits
from elang_jax.cascade._dar import (
    DarConfig,
    DifficultyAwareLoss,
    cascadebert_loss,
    difficulty_ranking_loss,
)
from elang_jax.cascade._operating_points import (
    calibrate_thresholds,
    calibrate_two_tier,
    cascade_candidates,
    simulate,
)
from elang_jax.cascade._seq2seq import (
    ElangSeq2Seq,
    EnergyHead,
    Seq2SeqCascadeConfig,
    Seq2SeqCascadeOutput,
    masked_mean,
    pooled_encoder_features,
)
from elang_jax.cascade._seq2seq_head import (
    calibrate_seq2seq_threshold,
    make_head_targets,
    normalize_tokens,
    seq2seq_tier_costs,
    train_energy_head,
)

__all__ = [
    "ElangSeq2Seq",
    "EnergyHead",
    "Seq2SeqCascadeConfig",
    "Seq2SeqCascadeOutput",
    "calibrate_seq2seq_threshold",
    "make_head_targets",
    "masked_mean",
    "normalize_tokens",
    "pooled_encoder_features",
    "seq2seq_tier_costs",
    "train_energy_head",
    "Cascade",
    "CascadeOutput",
    "Tier",
    "TierConfig",
    "calibrate_thresholds",
    "calibrate_two_tier",
    "dataset_logits",
    "DarConfig",
    "DifficultyAwareLoss",
    "cascadebert_loss",
    "difficulty_ranking_loss",
    "cascade_candidates",
    "simulate",
]
