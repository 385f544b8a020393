"""T5 configuration: sizes, relative-position buckets, feed-forward variant, token ids and
the named presets (T5 v1.0, v1.1, Flan-T5)."""

from __future__ import annotations

import dataclasses
from typing import Any

from elang_jax.models._common import activation_fn


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config:
    """Configuration of a T5 encoder-decoder. Field names follow Hugging Face's T5Config; see
    `elang_jax.hf` for the mapping from and to `config.json`.

    Attributes:
      num_decoder_layers: None means as many as `num_layers`.
      feed_forward_proj: "relu" (v1.0), "gated-gelu" (v1.1 / Flan-T5: GELU with the tanh
        approximation, as in Hugging Face), or more generally "[gated-]<activation>".
      tie_word_embeddings: True (v1.0): the LM head is the embedding matrix and the decoder
        output is scaled by d_model**-0.5. False (v1.1): an untied `lm_head`, no scaling.
      dtype: compute dtype; parameters and layer norms stay float32.
    """

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_decoder_layers: int | None = None
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    dtype: Any = None

    def __post_init__(self):
        if self.num_decoder_layers is None:
            object.__setattr__(self, "num_decoder_layers", self.num_layers)
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_layers", "num_decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        nb, md = self.relative_attention_num_buckets, self.relative_attention_max_distance
        if nb < 4:
            raise ValueError(f"relative_attention_num_buckets must be >= 4, got {nb}")
        # The log-spaced buckets start at nb // 2 (decoder); a max distance at or below that
        # divides by log(1) = 0.
        if md <= nb // 2:
            raise ValueError(
                f"relative_attention_max_distance={md} must exceed "
                f"relative_attention_num_buckets // 2 = {nb // 2}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(
                    f"{name}={getattr(self, name)} is outside the vocabulary [0, {self.vocab_size})"
                )
        activation_fn(self.activation)  # raises on an unknown activation name

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(
                f"feed_forward_proj={self.feed_forward_proj!r} must be '<activation>' or "
                "'gated-<activation>', e.g. 'relu' or 'gated-gelu'"
            )
        # Hugging Face maps "gated-gelu" to the tanh approximation (what v1.1 was trained with).
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return parts[-1]

    def replace(self, **kw) -> T5Config:
        return dataclasses.replace(self, **kw)

    @classmethod
    def tiny(cls, **kw) -> T5Config:
        """A few-kilobyte v1.0-style config (relu, tied head) for tests."""
        base = dict(
            vocab_size=99,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_decoder_layers=3,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=20,
        )
        return cls(**{**base, **kw})

    @classmethod
    def tiny_v1_1(cls, **kw) -> T5Config:
        """A few-kilobyte v1.1-style config (gated GELU, untied head) for tests."""
        return cls.tiny(**{"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, **kw})

    @classmethod
    def t5_small(cls, **kw) -> T5Config:
        """google-t5/t5-small (60.5M parameters)."""
        base = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8)
        return cls(**{**base, **kw})

    @classmethod
    def flan_t5_small(cls, **kw) -> T5Config:
        """google/flan-t5-small (77.0M parameters)."""
        base = dict(
            vocab_size=32128,
            d_model=512,
            d_kv=64,
            d_ff=1024,
            num_layers=8,
            num_heads=6,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
        )
        return cls(**{**base, **kw})
