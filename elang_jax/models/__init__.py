"""Backbones and heads. Public names only; implementations live in private modules.

The BERT family covers BERT, RoBERTa, MiniLM and MPNet (`BertConfig.mpnet_base()`,
`BertConfig(model_type="mpnet", ...)`).
"""

# Shared building blocks
# BERT family
from elang_jax.models._bert import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    num_parameters,
    step_inputs,
)
from elang_jax.models._bert_config import BertConfig, PositionStyle
from elang_jax.models._common import (
    Activation,
    FeedForward,
    KVCache,
    MultiHeadAttention,
    dot_product_attention,
)

# GPT-2 decoder
from elang_jax.models._gpt2 import (
    DecoderOutput,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    greedy_decode,
)

# Outputs
from elang_jax.models._outputs import ClassifierOutput, EncoderOutput, LMOutput

# T5 encoder-decoder
from elang_jax.models._t5 import (
    T5Config,
    T5DecoderCache,
    T5EncoderModel,
    T5ForConditionalGeneration,
    relative_position_bucket,
    t5_greedy,
    t5_greedy_from_encoder,
)

__all__ = [
    "DecoderOutput",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2Model",
    "T5Config",
    "T5DecoderCache",
    "T5EncoderModel",
    "T5ForConditionalGeneration",
    "greedy_decode",
    "relative_position_bucket",
    "t5_greedy",
    "t5_greedy_from_encoder",
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
    "step_inputs",
]
