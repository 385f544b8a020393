"""GPT-2 configuration: sizes, dropout rates, token ids and the named presets."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from elang_jax.models._common import activation_fn


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Config:
    """Configuration of a GPT-2 decoder. Field names follow Hugging Face's `GPT2Config`
    except the dropout rates; see `elang_jax.hf` for the mapping to and from config.json."""

    vocab_size: int
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None: 4 * n_embd
    activation_function: str = "gelu_new"
    resid_dropout: float = 0.1
    embd_dropout: float = 0.1
    attn_dropout: float = 0.1
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None  # None: generation pads with eos_token_id, as HF does
    dtype: Any = None  # compute dtype; parameters stay float32

    def __post_init__(self):
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_inner is not None and self.n_inner <= 0:
            raise ValueError(f"n_inner must be positive or None, got {self.n_inner}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for name in ("resid_dropout", "embd_dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        # Token ids may lie outside the vocabulary (HF's default GPT2Config keeps 50256 for
        # tiny test vocabularies): such an eos is simply never generated.
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")
        activation_fn(self.activation_function)  # raises on an unknown activation name

    @functools.cached_property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @functools.cached_property
    def d_ff(self) -> int:
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    @property
    def generation_pad_id(self) -> int:
        """Token emitted after EOS: pad_token_id, else eos_token_id, else 0."""
        for value in (self.pad_token_id, self.eos_token_id):
            if value is not None:
                return value
        return 0

    def replace(self, **kw) -> GPT2Config:
        return dataclasses.replace(self, **kw)

    @classmethod
    def tiny(cls, **kw) -> GPT2Config:
        """A few-kilobyte config for tests; bos = eos = the last vocabulary id."""
        base = dict(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        merged = {**base, **kw}
        for name in ("bos_token_id", "eos_token_id"):
            merged.setdefault(name, merged["vocab_size"] - 1)
        return cls(**merged)

    @classmethod
    def gpt2_small(cls, **kw) -> GPT2Config:
        """GPT-2 small (124M parameters), the `gpt2` checkpoint."""
        base = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
        return cls(**{**base, **kw})
