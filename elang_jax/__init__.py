"""elang_jax: adaptive-compute inference for pretrained transformers in JAX/Flax NNX.

Public API, grouped by area. Implementations live in private modules.

Shape vocabulary, used in every signature (jaxtyping), shape comment and einsum:

  b  batch rows             t  padded length (query tokens)   s  key / source tokens
  d  model width            h  attention heads                k  head width
  f  FFN width              c  classes                        v  vocabulary
  n  rows or tokens kept in a bucket / after pruning          m  new tokens, or examples
  x  exits                  e  experts                        K  cascade tiers
  l1 embeddings plus layers (exit feature history)
  shards  data shards of a data-parallel step
"""

from elang_jax._version import __version__
from elang_jax.calibration import CalibrationTarget, OperatingPoint, calibrate, fit_temperature

# Cascades (E-LANG, TangoBERT, CascadeBERT)
from elang_jax.cascade import (
    Cascade,
    CascadeOutput,
    ElangSeq2Seq,
    Seq2SeqCascadeConfig,
    Tier,
    TierConfig,
)

# Composition: cascades, exits, MoE and pruning through one configuration
from elang_jax.compose import ComposedClassifier, ComposedConfig, ComposedTierConfig

# The compaction core
from elang_jax.core import bucket_sizes, compact_apply

# Multi-exit encoders (DeeBERT, PABEE, Right Tool for the Job)
from elang_jax.exits import ExitPolicy, MultiExit, MultiExitConfig

# Hugging Face checkpoints
from elang_jax.hf import CheckpointMismatchError, from_pretrained, save_pretrained

# Backbones and heads
from elang_jax.models import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    ClassifierOutput,
    EncoderOutput,
    FeedForward,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    LMOutput,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
)

# MoEfication and sparse MoE FFNs
from elang_jax.moe import MoEConfig, MoEFeedForward, MoEImpl, moefy

# ACC token pruning
from elang_jax.pruning import AccConfig, KeepSchedule, acc_classify, acc_scores, tune_schedule

# Routing scores and calibration
from elang_jax.routing import Score, energy_score, score

# Scale-out through jax.sharding: one mesh, one logical-axis rules table
from elang_jax.sharding import make_mesh, param_shardings, shard_model

# Speculative decoding: LayerSkip self-speculation, Swift-to-Super speculative cascades
from elang_jax.speculative import (
    CascadeConfig,
    LayerSkipConfig,
    SpeculativeConfig,
    SpeculativeOutput,
    speculative_cascade_gpt2,
    speculative_generate_gpt2,
    speculative_generate_t5,
)

__all__ = [
    "AccConfig",
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertModel",
    "CalibrationTarget",
    "Cascade",
    "CascadeConfig",
    "CascadeOutput",
    "CheckpointMismatchError",
    "ClassifierOutput",
    "ComposedClassifier",
    "ComposedConfig",
    "ComposedTierConfig",
    "ElangSeq2Seq",
    "EncoderOutput",
    "ExitPolicy",
    "FeedForward",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2Model",
    "KeepSchedule",
    "LMOutput",
    "LayerSkipConfig",
    "MoEConfig",
    "MoEFeedForward",
    "MoEImpl",
    "MultiExit",
    "MultiExitConfig",
    "OperatingPoint",
    "Score",
    "Seq2SeqCascadeConfig",
    "SpeculativeConfig",
    "SpeculativeOutput",
    "T5Config",
    "T5EncoderModel",
    "T5ForConditionalGeneration",
    "Tier",
    "TierConfig",
    "acc_classify",
    "acc_scores",
    "bucket_sizes",
    "calibrate",
    "compact_apply",
    "energy_score",
    "fit_temperature",
    "from_pretrained",
    "make_mesh",
    "moefy",
    "param_shardings",
    "save_pretrained",
    "score",
    "shard_model",
    "speculative_cascade_gpt2",
    "speculative_generate_gpt2",
    "speculative_generate_t5",
    "tune_schedule",
    "__version__",
]
