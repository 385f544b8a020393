"""elang_jax: adaptive-compute inference for pretrained transformers in JAX/Flax NNX.

Public API, grouped by area. Implementations live in private modules.
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

# Routing scores and calibration
from elang_jax.routing import Score, energy_score, score

__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertModel",
    "CalibrationTarget",
    "Cascade",
    "CascadeOutput",
    "CheckpointMismatchError",
    "ClassifierOutput",
    "ElangSeq2Seq",
    "ExitPolicy",
    "EncoderOutput",
    "FeedForward",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2Model",
    "LMOutput",
    "MultiExit",
    "MultiExitConfig",
    "OperatingPoint",
    "Score",
    "Seq2SeqCascadeConfig",
    "T5Config",
    "T5EncoderModel",
    "T5ForConditionalGeneration",
    "Tier",
    "TierConfig",
    "__version__",
    "bucket_sizes",
    "calibrate",
    "compact_apply",
    "energy_score",
    "fit_temperature",
    "from_pretrained",
    "save_pretrained",
    "score",
]
