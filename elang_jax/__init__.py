"""elang_jax: adaptive-compute inference for pretrained transformers in JAX/Flax NNX.

Public API, grouped by area. Implementations live in private modules.
"""

from elang_jax._version import __version__

# Backbones and heads
from elang_jax.models import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    ClassifierOutput,
    EncoderOutput,
    FeedForward,
    LMOutput,
)

# Hugging Face checkpoints
from elang_jax.hf import CheckpointMismatchError, from_pretrained, save_pretrained

__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertModel",
    "CheckpointMismatchError",
    "ClassifierOutput",
    "EncoderOutput",
    "FeedForward",
    "LMOutput",
    "__version__",
    "from_pretrained",
    "save_pretrained",
]
