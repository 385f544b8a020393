"""BERT-family configuration (BERT, RoBERTa, MiniLM, MPNet) and its named presets."""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import Any

from elang_jax.models._common import activation_fn

# MPNet's relative position buckets: transformers computes them with these two values
# whatever the config says (`MPNetEncoder.compute_position_bias` / `relative_position_bucket`
# defaults), so they are constants, not config fields.
MPNET_RELATIVE_BUCKETS = 32
MPNET_RELATIVE_MAX_DISTANCE = 128
_MODEL_TYPES = ("bert", "roberta", "mpnet")


class PositionStyle(enum.StrEnum):
    ABSOLUTE = "absolute"  # BERT: positions 0..t-1
    ROBERTA = "roberta"  # RoBERTa: pad_token_id + 1 + running count of non-pad tokens


# What every MPNet config has: transformers' MPNetEmbeddings hard-codes padding index 1 for
# its RoBERTa-style position ids and has no token-type table.
MPNET_DEFAULTS: dict[str, Any] = dict(
    type_vocab_size=0, position_style=PositionStyle.ROBERTA, pad_token_id=1
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig:
    """Configuration of a BERT-family encoder. Field names follow our conventions; see
    `elang_jax.hf` for the mapping from and to Hugging Face `config.json`."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # 0: no token-type table (MPNet)
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float | None = None
    pad_token_id: int = 0
    position_style: PositionStyle | str = PositionStyle.ABSOLUTE
    # "bert", "roberta" or "mpnet": decides the head layouts; "mpnet" adds the relative
    # position bias shared by all layers.
    model_type: str = "bert"
    num_labels: int = 2
    add_pooler: bool = True
    dtype: Any = None  # compute dtype; parameters stay float32

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.model_type not in _MODEL_TYPES:
            raise ValueError(f"model_type must be one of {_MODEL_TYPES}, got {self.model_type!r}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {self.num_labels}")
        activation_fn(self.hidden_act)  # raises on an unknown activation name
        object.__setattr__(self, "position_style", PositionStyle(self.position_style))
        if self.model_type == "mpnet":
            bad = {k: getattr(self, k) for k, v in MPNET_DEFAULTS.items() if getattr(self, k) != v}
            if bad:
                raise ValueError(f"an MPNet config needs {MPNET_DEFAULTS}, got {bad}")
        elif self.type_vocab_size < 1:
            raise ValueError(
                f"type_vocab_size={self.type_vocab_size}: {self.model_type} needs a token-type "
                "table (only MPNet has none)"
            )

    @property
    def roberta_style_heads(self) -> bool:
        """Heads without the pooler: dense + tanh + out_proj on token 0, and a masked-LM
        head with GELU whatever `hidden_act` (RoBERTa and MPNet)."""
        return self.model_type in ("roberta", "mpnet")

    @property
    def relative_attention_num_buckets(self) -> int:
        """Buckets of the relative position bias (0: none)."""
        return MPNET_RELATIVE_BUCKETS if self.model_type == "mpnet" else 0

    @functools.cached_property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_length(self) -> int:
        """Longest sequence the position table supports."""
        if self.position_style is PositionStyle.ROBERTA:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings

    def replace(self, **kw) -> BertConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def tiny(cls, **kw) -> BertConfig:
        """A few-kilobyte config for tests (`model_type="mpnet"` for a tiny MPNet)."""
        base = dict(
            vocab_size=99,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            intermediate_size=37,
            max_position_embeddings=64,
        )
        if kw.get("model_type") == "mpnet":
            base.update(MPNET_DEFAULTS)
        return cls(**{**base, **kw})

    @classmethod
    def mpnet_base(cls, **kw) -> BertConfig:
        """all-mpnet-base-v2 / mpnet-base: BERT-base sizes, relative position bias."""
        base = dict(
            vocab_size=30527,
            max_position_embeddings=514,
            layer_norm_eps=1e-5,
            model_type="mpnet",
            **MPNET_DEFAULTS,
        )
        return cls.bert_base(**{**base, **kw})

    @classmethod
    def minilm_l6(cls, **kw) -> BertConfig:
        """all-MiniLM-L6-v2 / MiniLM-L6-H384."""
        base = dict(
            vocab_size=30522,
            hidden_size=384,
            num_layers=6,
            num_heads=12,
            intermediate_size=1536,
        )
        return cls(**{**base, **kw})

    @classmethod
    def bert_base(cls, **kw) -> BertConfig:
        base = dict(
            vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072
        )
        return cls(**{**base, **kw})
