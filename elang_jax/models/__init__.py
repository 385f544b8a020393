"""Backbones and heads. Public names only; implementations live in private modules."""

# Shared building blocks
from elang_jax.models._common import (
    Activation,
    FeedForward,
    KVCache,
    MultiHeadAttention,
    dot_product_attention,
)

# Outputs
from elang_jax.models._outputs import ClassifierOutput, EncoderOutput, LMOutput

# BERT family
from elang_jax.models._bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    PositionStyle,
    num_parameters,
)

__all__ = [
    "Activation",
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertModel",
    "ClassifierOutput",
    "EncoderOutput",
    "FeedForward",
    "KVCache",
    "LMOutput",
    "MultiHeadAttention",
    "PositionStyle",
    "dot_product_attention",
    "num_parameters",
]
