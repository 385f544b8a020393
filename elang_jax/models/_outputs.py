"""Structured outputs of every backbone. Fields a call did not ask for are None."""

from __future__ import annotations

from typing import Any

import flax.struct
from jaxtyping import Array, Float


@flax.struct.dataclass
class EncoderOutput:
    """Output of an encoder stack (BERT family, T5 encoder).

    Attributes:
      last_hidden_state: [b t d] output of the last layer that ran.
      hidden_states: (l + 1) x [b t d]: embeddings, then every layer's output.
      attentions: l x [b h t t] attention probabilities (float32), when requested.
      pooled: [b d] pooler output (BERT family), when the model has a pooler.
    """

    last_hidden_state: Float[Array, "b t d"]
    hidden_states: tuple[Array, ...] | None = None
    attentions: tuple[Array, ...] | None = None
    pooled: Float[Array, "b d"] | None = None


@flax.struct.dataclass
class ClassifierOutput:
    """Sequence-classification output: logits plus what the encoder returned."""

    logits: Float[Array, "b c"]
    encoder: EncoderOutput


@flax.struct.dataclass
class LMOutput:
    """Token-level logits (masked LM, causal LM, seq2seq decoder).

    Attributes:
      logits: [b t v].
      hidden_states: per-layer hidden states of the stack that produced the logits.
      attentions: per-layer self-attention probabilities, when requested.
      cache: the updated KV cache (decoders), else None.
      encoder: the encoder's output (seq2seq), else None.
    """

    logits: Float[Array, "b t v"]
    hidden_states: tuple[Array, ...] | None = None
    attentions: tuple[Array, ...] | None = None
    cache: Any = None
    encoder: EncoderOutput | None = None
