"""T5 encoder-decoder (T5 v1.0, T5 v1.1, Flan-T5) in Flax NNX, with greedy KV-cached decoding.

What sets T5 apart from the BERT family, and how this file handles it:
  * RMS layer norm without bias or mean subtraction, computed in float32 (`T5LayerNorm`);
    pre-norm layers with a final norm per stack;
  * no position embeddings: a learned relative position bias, owned by each stack and computed
    once per call, is added to the attention logits of every layer of that stack (HF keeps
    the table in block 0 and shares its output; same thing). Bidirectional buckets in the
    encoder, causal buckets in the decoder;
  * no 1/sqrt(k) scaling of attention logits (folded into the initialisation);
  * v1.0 ties the LM head to the embeddings and scales the decoder output by d_model**-0.5;
    v1.1 / Flan-T5 has its own untied head and no scaling.

The encoder exposes what the adaptive-compute methods need, like `BertModel`:
  * `embed` then `encoder.run_layers(h, mask, start, stop, positions=...)`: any range of
    layers on any subset of tokens. The relative bias is computed from `positions`, the
    tokens' original positions, so a gathered subset with its positions sees exactly the
    biases it saw in the full sequence;
  * per-layer hidden states and attention probabilities on request;
  * `layer.ffn`, a pluggable feed-forward module (MoE layers replace it).

Decoding is functional: `decode(..., cache, cache_index)` returns the new cache in
`LMOutput.cache` and never mutates NNX state, so it runs inside `lax.while_loop`. The
self-attention cache has a static length; the cross-attention keys/values are computed once
from the encoder output and carried in the same cache.

Greedy generation runs under `jax.jit` as the pure function `t5_greedy(graphdef, state, ...)`;
`T5ForConditionalGeneration.generate` splits the model and calls its jitted form.

Shape names are those of `elang_jax.models._common`, plus s for the encoder length in the
decoder's cross-attention and n for the number of generated tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from elang_jax.models._common import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    activation_fn,
    check_mask,
    check_token_ids,
    dropout,
    is_concrete,
    update_cache,
)
from elang_jax.models._outputs import EncoderOutput, LMOutput

# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Layer norm and relative position buckets
# ---------------------------------------------------------------------------


class T5LayerNorm(nnx.Module):
    """RMS norm: x / sqrt(mean(x^2) + eps) * scale, in float32 whatever the input dtype."""

    def __init__(self, d_model: int, *, epsilon: float, dtype: Any = None):
        self.scale = nnx.Param(jnp.ones((d_model,), jnp.float32))
        self.epsilon = epsilon
        self.dtype = dtype

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(variance + self.epsilon)
        return (self.scale[...] * y).astype(self.dtype or x.dtype)


@functools.cache
def _bucket_table(bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """Buckets of relative positions -max_distance..max_distance, computed on the host.

    The arithmetic mirrors Hugging Face's `_relative_position_bucket` step by step in float32
    (numpy's float32 log agrees with torch's): at the positions where the log-spaced formula
    lands exactly on an integer (16, 32, 64 for the defaults) a one-ulp difference would move
    a token to the next bucket, so the table is fixed on the host, the same on every device.
    """
    rel = np.arange(-max_distance, max_distance + 1, dtype=np.int64)
    buckets = np.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0) * num_buckets
        dist = np.abs(rel)
    else:
        dist = -np.minimum(rel, 0)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (
            np.log(dist.astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact)
        )
    # log(0) = -inf only occurs for dist < max_exact, where the exact bucket is taken.
    scaled = np.where(dist < max_exact, 0.0, scaled)
    large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
    return (buckets + np.where(dist < max_exact, dist, large)).astype(np.int32)


def relative_position_bucket(
    relative_position: Int[Array, "b t s"],
    *,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
) -> Int[Array, "b t s"]:
    """T5's bucket of `key_position - query_position`, exactly as Hugging Face computes it.

    Half the buckets are exact small distances, the rest log-spaced up to `max_distance`;
    every distance beyond falls into the last bucket, which is why clipping to
    [-max_distance, max_distance] before the table lookup changes nothing. Bidirectional
    (encoder) buckets split into past and future halves; causal (decoder) buckets only count
    the past (future keys are masked anyway).
    """
    table = jnp.asarray(_bucket_table(bidirectional, num_buckets, max_distance))
    rel = jnp.clip(relative_position, -max_distance, max_distance)
    return table[rel + max_distance]


class RelativePositionBias(nnx.Module):
    """The learned [buckets, h] table of one stack, turned into [b h t s] logit biases."""

    def __init__(
        self,
        num_buckets: int,
        num_heads: int,
        max_distance: int,
        *,
        bidirectional: bool,
        rngs: nnx.Rngs,
    ):
        # float32 whatever the compute dtype: the bias is added to float32 logits.
        self.embedding = nnx.Param(
            jax.random.normal(rngs.params(), (num_buckets, num_heads), jnp.float32)
        )
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional

    def __call__(
        self, query_positions: Int[Array, "b t"], key_positions: Int[Array, "b s"]
    ) -> Float[Array, "b h t s"]:
        # [b t s]
        rel = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_bucket(
            rel,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        # [b t s h]
        values = jnp.take(self.embedding[...], buckets, axis=0)
        # [b t s h] -> [b h t s]
        return jnp.transpose(values, (0, 3, 1, 2))


def _masked_bias(
    position_bias: Float[Array, "b h t s"], keep: Bool[Array, "b 1 t s"] | None
) -> Float[Array, "b h t s"]:
    """Masked logits get the float32 minimum instead of bias + minimum: adding two minima
    (padding and causal) would overflow to -inf and turn a fully masked row into NaNs."""
    if keep is None:
        return position_bias
    return jnp.where(keep, position_bias, jnp.finfo(jnp.float32).min)


# ---------------------------------------------------------------------------
# Layers and stacks
# ---------------------------------------------------------------------------


@flax.struct.dataclass
class T5DecoderCache:
    """The decoder's functional cache.

    Attributes:
      self_attention: one KVCache per decoder layer, [b c h k] each, c the static length.
      cross_attention: one KVCache per decoder layer with the encoder's projected keys and
        values, [b s h k] each; None until the first `decode` call fills it.
    """

    self_attention: tuple[KVCache, ...]
    cross_attention: tuple[KVCache, ...] | None = None

    @property
    def max_length(self) -> int:
        return self.self_attention[0].key.shape[1]


def _attention(config: T5Config, rngs: nnx.Rngs) -> MultiHeadAttention:
    # T5 has no 1/sqrt(k) logit scaling: the query projection's initialisation absorbs it.
    return MultiHeadAttention(
        config.d_model,
        config.num_heads,
        config.d_kv,
        use_bias=False,
        scale=1.0,
        dtype=config.dtype,
        rngs=rngs,
    )


def _norm(config: T5Config) -> T5LayerNorm:
    return T5LayerNorm(config.d_model, epsilon=config.layer_norm_epsilon, dtype=config.dtype)


class T5Layer(nnx.Module):
    """Pre-norm layer: h += Attn(LN(h)); [decoder: h += CrossAttn(LN(h), enc)]; h += FFN(LN(h)).

    Attribute names match `BertLayer` (`attention`, `ffn`, ...) so that methods treat the
    layers of every backbone alike.
    """

    def __init__(self, config: T5Config, *, cross_attention: bool, rngs: nnx.Rngs):
        self.attention_norm = _norm(config)
        self.attention = _attention(config, rngs)
        self.cross_attention_norm = _norm(config) if cross_attention else None
        self.cross_attention = _attention(config, rngs) if cross_attention else None
        self.ffn_norm = _norm(config)
        self.ffn = FeedForward(
            config.d_model,
            config.d_ff,
            activation=config.activation,
            gated=config.is_gated,
            use_bias=False,
            dtype=config.dtype,
            rngs=rngs,
        )
        self.dropout_rate = config.dropout_rate

    def __call__(
        self,
        h: Float[Array, "b t d"],
        bias: Float[Array, "b h t s"],
        *,
        cache: KVCache | None = None,
        cache_index: Int[Array, ""] | None = None,
        cross_kv: KVCache | None = None,
        cross_bias: Float[Array, "b 1 1 s"] | None = None,
        return_probs: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Float[Array, "b t d"], Float[Array, "b h t s"] | None, KVCache | None]:
        """One layer. With `cache`, the new keys/values are written at `cache_index` and the
        queries attend over the whole cache (`bias` masks what is not yet written)."""
        x = self.attention_norm(h)
        kv = None
        if cache is not None:
            k, v = self.attention.project_kv(x)
            cache = update_cache(cache, k, v, cache_index)
            kv = (cache.key, cache.value)
        # Attention-probability dropout is folded into the output dropout (as in BertLayer).
        attn, probs = self.attention(x, bias, kv=kv, return_probs=return_probs)
        h = h + dropout(attn, self.dropout_rate, rngs)
        if self.cross_attention is not None:
            if cross_kv is None:
                raise ValueError("a decoder layer needs the encoder's keys and values (cross_kv)")
            x = self.cross_attention_norm(h)
            attn, _ = self.cross_attention(x, cross_bias, kv=(cross_kv.key, cross_kv.value))
            h = h + dropout(attn, self.dropout_rate, rngs)
        h = h + dropout(self.ffn(self.ffn_norm(h)), self.dropout_rate, rngs)
        return h, probs, cache


def _check_range(start: int, stop: int | None, n: int) -> int:
    stop = n if stop is None else stop
    if not 0 <= start <= stop <= n:
        raise ValueError(f"layer range [{start}, {stop}) is outside [0, {n}]")
    return stop


class T5EncoderStack(nnx.Module):
    """The encoder's layers, relative position bias and final norm (the embedding table is
    the model's `shared`, used by the decoder too)."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.relative_bias = RelativePositionBias(
            config.relative_attention_num_buckets,
            config.num_heads,
            config.relative_attention_max_distance,
            bidirectional=True,
            rngs=rngs,
        )
        self.layers = nnx.List(
            [T5Layer(config, cross_attention=False, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.final_norm = _norm(config)

    def attention_bias(
        self,
        attention_mask: Int[Array, "b t"] | None,
        positions: Int[Array, "b t"] | None,
        length: int,
    ) -> Float[Array, "b h t t"]:
        """Relative position bias plus padding mask, shared by every layer of the stack."""
        if positions is None:
            # [1 t]
            positions = jnp.arange(length, dtype=jnp.int32)[None]
        bias = self.relative_bias(positions, positions)
        keep = None if attention_mask is None else attention_mask[:, None, None, :].astype(bool)
        return _masked_bias(bias, keep)

    def run_layers(
        self,
        h: Float[Array, "b t d"],
        attention_mask: Int[Array, "b t"] | None,
        start: int = 0,
        stop: int | None = None,
        *,
        positions: Int[Array, "b t"] | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> EncoderOutput:
        """Runs layers [start, stop) on hidden states `h`, which may be any subset of a
        sequence's tokens: `positions` [b t] are their original positions (default 0..t-1),
        from which the relative bias is computed.

        The final layer norm is not applied (call `finish`), so that ranges compose:
        run_layers(0, i) then run_layers(i, l) equals run_layers(0, l). `hidden_states`,
        when asked for, holds the input `h` followed by each layer's output.
        """
        stop = _check_range(start, stop, len(self.layers))
        bias = self.attention_bias(attention_mask, positions, h.shape[1])
        hiddens, attns = [h], []
        for layer in self.layers[start:stop]:
            h, probs, _ = layer(h, bias, return_probs=output_attentions, rngs=rngs)
            hiddens.append(h)
            attns.append(probs)
        return EncoderOutput(
            last_hidden_state=h,
            hidden_states=tuple(hiddens) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
        )

    def finish(
        self, h: Float[Array, "b t d"], *, rngs: nnx.Rngs | None = None
    ) -> Float[Array, "b t d"]:
        """The final RMS norm (and dropout) after the last layer."""
        return dropout(self.final_norm(h), self.config.dropout_rate, rngs)


class T5DecoderStack(nnx.Module):
    """The decoder's layers (self-attention, cross-attention, FFN), causal relative position
    bias and final norm."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.relative_bias = RelativePositionBias(
            config.relative_attention_num_buckets,
            config.num_heads,
            config.relative_attention_max_distance,
            bidirectional=False,
            rngs=rngs,
        )
        self.layers = nnx.List(
            [
                T5Layer(config, cross_attention=True, rngs=rngs)
                for _ in range(config.num_decoder_layers)
            ]
        )
        self.final_norm = _norm(config)

    def cross_kv(self, encoder_hidden: Float[Array, "b s d"]) -> tuple[KVCache, ...]:
        """Each layer's cross-attention keys and values, computed once per source sequence."""
        out = []
        for layer in self.layers:
            k, v = layer.cross_attention.project_kv(encoder_hidden)
            out.append(KVCache(key=k, value=v))
        return tuple(out)

    def __call__(
        self,
        h: Float[Array, "b t d"],
        *,
        cross_kv: tuple[KVCache, ...],
        encoder_mask: Int[Array, "b s"] | None,
        cache: tuple[KVCache, ...] | None = None,
        cache_index: Int[Array, ""] | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Float[Array, "b t d"], tuple | None, tuple | None, tuple[KVCache, ...] | None]:
        """Runs every layer and the final norm: (h, hidden_states, attentions, new cache).

        Without a cache the t tokens sit at positions 0..t-1 (teacher forcing); with one they
        sit at cache_index..cache_index+t-1 and attend to the c cached positions.
        """
        t = h.shape[1]
        start = jnp.asarray(0 if cache_index is None else cache_index, jnp.int32)
        # [1 t]
        query_pos = start + jnp.arange(t, dtype=jnp.int32)[None]
        # [1 s]: with a cache, every slot; slots not yet written lie in the future and are
        # masked by causality.
        key_len = t if cache is None else cache[0].key.shape[1]
        key_pos = jnp.arange(key_len, dtype=jnp.int32)[None]
        # [1 1 t s]
        causal = (key_pos[:, None, :] <= query_pos[:, :, None])[:, None]
        bias = _masked_bias(self.relative_bias(query_pos, key_pos), causal)
        cross_bias = None
        if encoder_mask is not None:
            # [b 1 1 s]
            keep = encoder_mask[:, None, None, :].astype(bool)
            cross_bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)
        hiddens, attns, new_cache = [h], [], []
        for i, layer in enumerate(self.layers):
            h, probs, layer_cache = layer(
                h,
                bias,
                cache=None if cache is None else cache[i],
                cache_index=start,
                cross_kv=cross_kv[i],
                cross_bias=cross_bias,
                return_probs=output_attentions,
                rngs=rngs,
            )
            hiddens.append(h)
            attns.append(probs)
            new_cache.append(layer_cache)
        h = dropout(self.final_norm(h), self.config.dropout_rate, rngs)
        # Hugging Face reports the final-normed output as the last hidden state.
        hiddens[-1] = h
        return (
            h,
            tuple(hiddens) if output_hidden_states else None,
            tuple(attns) if output_attentions else None,
            None if cache is None else tuple(new_cache),
        )


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


def _check_inputs(config: T5Config, input_ids, attention_mask, name: str = "input_ids") -> None:
    check_token_ids(input_ids, config.vocab_size, name)
    if attention_mask is not None:
        check_mask(attention_mask, input_ids.shape)


def _encode(
    model: T5ForConditionalGeneration | T5EncoderModel,
    input_ids: Int[Array, "b t"],
    attention_mask: Int[Array, "b t"] | None,
    output_hidden_states: bool,
    output_attentions: bool,
    rngs: nnx.Rngs | None,
) -> EncoderOutput:
    _check_inputs(model.config, input_ids, attention_mask)
    h = model.embed(input_ids, rngs=rngs)
    out = model.encoder.run_layers(
        h,
        attention_mask,
        output_hidden_states=output_hidden_states,
        output_attentions=output_attentions,
        rngs=rngs,
    )
    last = model.encoder.finish(out.last_hidden_state, rngs=rngs)
    hiddens = out.hidden_states
    if hiddens is not None:
        # Hugging Face reports the final-normed output as the last hidden state.
        hiddens = (*hiddens[:-1], last)
    return out.replace(last_hidden_state=last, hidden_states=hiddens)


class T5ForConditionalGeneration(nnx.Module):
    """T5 encoder-decoder with its LM head (Hugging Face's T5ForConditionalGeneration).

    Example (greedy decoding under jit):
      model = T5ForConditionalGeneration(T5Config.tiny(), rngs=nnx.Rngs(0))
      tokens = model.generate(input_ids, attention_mask, max_new_tokens=20)  # [b 20] int32
    or, to own the jitted function (e.g. in a serving loop):
      graphdef, state = nnx.split(model)
      fn = jax.jit(t5_greedy, static_argnums=0, static_argnames="max_new_tokens")
      tokens = fn(graphdef, state, input_ids, attention_mask, max_new_tokens=20)
    """

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.shared = nnx.Embed(
            config.vocab_size,
            config.d_model,
            dtype=config.dtype,
            embedding_init=nnx.initializers.normal(1.0),
            rngs=rngs,
        )
        self.encoder = T5EncoderStack(config, rngs=rngs)
        self.decoder = T5DecoderStack(config, rngs=rngs)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nnx.Linear(
                config.d_model, config.vocab_size, use_bias=False, dtype=config.dtype, rngs=rngs
            )
        )

    def check_inputs(
        self, input_ids: Int[Array, "b t"], attention_mask: Int[Array, "b t"] | None = None
    ) -> None:
        """Shape, dtype and (for concrete arrays) value checks with messages that name them."""
        _check_inputs(self.config, input_ids, attention_mask)

    def embed(
        self, input_ids: Int[Array, "b t"], *, rngs: nnx.Rngs | None = None
    ) -> Float[Array, "b t d"]:
        """Token embeddings (shared by encoder and decoder); T5 adds no positions here."""
        return dropout(self.shared(input_ids), self.config.dropout_rate, rngs)

    def encode(
        self,
        input_ids: Int[Array, "b t"],
        attention_mask: Int[Array, "b t"] | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> EncoderOutput:
        """The encoder: embeddings, every layer, final norm.

        `hidden_states` has l + 1 entries: the embeddings, then each layer's output, the last
        one after the final norm (equal to `last_hidden_state`, as in Hugging Face).
        """
        return _encode(
            self, input_ids, attention_mask, output_hidden_states, output_attentions, rngs
        )

    def init_cache(
        self,
        batch: int,
        max_length: int,
        encoder_hidden: Float[Array, "b s d"] | None = None,
    ) -> T5DecoderCache:
        """An empty decoder cache for `max_length` decoder positions. Its cross-attention
        part is computed from `encoder_hidden` when given, else by the first `decode` call."""
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        c = self.config
        shape = (batch, max_length, c.num_heads, c.d_kv)
        dtype = c.dtype or jnp.float32
        layer = lambda: KVCache(key=jnp.zeros(shape, dtype), value=jnp.zeros(shape, dtype))
        cross = None if encoder_hidden is None else self.decoder.cross_kv(encoder_hidden)
        return T5DecoderCache(
            self_attention=tuple(layer() for _ in range(c.num_decoder_layers)),
            cross_attention=cross,
        )

    def lm_logits(self, h: Float[Array, "b t d"]) -> Float[Array, "b t v"]:
        """Float32 logits from the decoder's final hidden states."""
        if self.lm_head is None:
            # The tied head reuses the embedding matrix, whose scale suits inputs, not logits:
            # Mesh TensorFlow rescaled by d_model**-0.5, and v1.0 checkpoints expect it.
            # [b t d] x [v d] -> [b t v]
            return self.shared.attend(h * self.config.d_model**-0.5).astype(jnp.float32)
        return self.lm_head(h).astype(jnp.float32)

    def decode(
        self,
        decoder_input_ids: Int[Array, "b t"],
        encoder_hidden: Float[Array, "b s d"] | None,
        encoder_mask: Int[Array, "b s"] | None = None,
        cache: T5DecoderCache | None = None,
        cache_index: Int[Array, ""] | int | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> LMOutput:
        """Decoder plus LM head.

        Without `cache`: teacher forcing over positions 0..t-1 (causal). With `cache` (see
        `init_cache`) and `cache_index`: the t tokens sit at cache_index..cache_index+t-1,
        their keys/values are written into the cache, and `LMOutput.cache` is the new cache
        (nothing is mutated). `encoder_hidden` may be None once the cache holds the
        cross-attention keys/values.
        """
        check_token_ids(decoder_input_ids, self.config.vocab_size, "decoder_input_ids")
        cross = None if cache is None else cache.cross_attention
        if cross is None:
            if encoder_hidden is None:
                raise ValueError("decode needs encoder_hidden (or a cache holding cross_kv)")
            if encoder_hidden.ndim != 3 or encoder_hidden.shape[0] != decoder_input_ids.shape[0]:
                raise ValueError(
                    f"encoder_hidden must be [batch={decoder_input_ids.shape[0]}, length, "
                    f"{self.config.d_model}], got {encoder_hidden.shape}"
                )
            cross = self.decoder.cross_kv(encoder_hidden)
        if encoder_mask is not None:
            check_mask(encoder_mask, cross[0].key.shape[:2], "encoder_mask")
        if cache is not None:
            if cache_index is None:
                raise ValueError("decode with a cache needs cache_index")
            t, c = decoder_input_ids.shape[1], cache.max_length
            if is_concrete(cache_index) and int(cache_index) + t > c:
                raise ValueError(
                    f"writing {t} tokens at cache_index={int(cache_index)} overflows the "
                    f"cache of {c} positions"
                )
        h = self.embed(decoder_input_ids, rngs=rngs)
        h, hiddens, attns, self_cache = self.decoder(
            h,
            cross_kv=cross,
            encoder_mask=encoder_mask,
            cache=None if cache is None else cache.self_attention,
            cache_index=cache_index,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        new_cache = None
        if cache is not None:
            new_cache = T5DecoderCache(self_attention=self_cache, cross_attention=cross)
        return LMOutput(
            logits=self.lm_logits(h), hidden_states=hiddens, attentions=attns, cache=new_cache
        )

    def __call__(
        self,
        input_ids: Int[Array, "b s"],
        attention_mask: Int[Array, "b s"] | None = None,
        decoder_input_ids: Int[Array, "b t"] | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> LMOutput:
        """Teacher-forced forward pass: encoder, then decoder over `decoder_input_ids`
        (start token first; see `shift_right`). `LMOutput.encoder` holds the encoder output;
        hidden states and attentions are the decoder's."""
        if decoder_input_ids is None:
            raise ValueError(
                "decoder_input_ids is required: the targets shifted right (shift_right(labels))"
            )
        enc = self.encode(
            input_ids,
            attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        out = self.decode(
            decoder_input_ids,
            enc.last_hidden_state,
            attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        return out.replace(encoder=enc)

    def shift_right(self, labels: Int[Array, "b t"]) -> Int[Array, "b t"]:
        """Decoder inputs for teacher forcing: the start token, then labels[:, :-1]
        (-100 ignore labels become padding)."""
        c = self.config
        # [b t]
        shifted = jnp.concatenate(
            [jnp.full_like(labels[:, :1], c.decoder_start_token_id), labels[:, :-1]], axis=1
        )
        return jnp.where(shifted == -100, c.pad_token_id, shifted)

    def generate(
        self,
        input_ids: Int[Array, "b s"],
        attention_mask: Int[Array, "b s"] | None = None,
        max_new_tokens: int = 20,
    ) -> Int[Array, "b n"]:
        """Greedy decoding under `jax.jit`: int32 [b, max_new_tokens]; after a row's EOS, pad.

        Eager callers get the input checks; the work runs in the jitted `t5_greedy`.
        """
        self.check_inputs(input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        graphdef, state = nnx.split(self)
        return _t5_greedy_jit(
            graphdef, state, input_ids, attention_mask, max_new_tokens=int(max_new_tokens)
        )


def t5_greedy(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    input_ids: Int[Array, "b s"],
    attention_mask: Int[Array, "b s"],
    *,
    max_new_tokens: int,
) -> Int[Array, "b n"]:
    """Greedy KV-cached decoding as a pure function of the split model, jit-friendly.

    Use as `jax.jit(t5_greedy, static_argnums=0, static_argnames="max_new_tokens")`. Matches
    Hugging Face's greedy `generate`: the first input is the decoder start token, a row that
    emitted EOS emits `pad_token_id` afterwards, and the loop stops early once every row is
    done (the remaining outputs stay pad). The cache holds exactly `max_new_tokens` positions.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model = nnx.merge(graphdef, state)
    enc = model.encode(input_ids, attention_mask).last_hidden_state
    return t5_greedy_from_encoder(model, enc, attention_mask, max_new_tokens=max_new_tokens)


def t5_greedy_from_encoder(
    model: T5ForConditionalGeneration,
    encoder_hidden: Float[Array, "b s d"],
    encoder_mask: Int[Array, "b s"],
    *,
    max_new_tokens: int,
    done: Bool[Array, " b"] | None = None,
) -> Int[Array, "b n"]:
    """Greedy KV-cached decoding that starts from an encoder output already computed.

    The decoding loop of `t5_greedy` (which encodes first): start token, argmax, pad
    after EOS, stop once every row is done. Rows with `done` = True on entry are not
    decoded (they emit pad) and do not keep the loop running: compaction buckets pass their
    padding rows here so that they never lengthen the loop. Call it inside a trace (under
    jit) on a merged model.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    c = model.config
    b = encoder_hidden.shape[0]
    cache = model.init_cache(b, max_new_tokens, encoder_hidden)
    start = jnp.full((b,), c.decoder_start_token_id, jnp.int32)
    # [b n]
    tokens = jnp.full((b, max_new_tokens), c.pad_token_id, jnp.int32)
    done = jnp.zeros((b,), bool) if done is None else done.astype(bool)

    def cond(carry):
        i, _, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, done, cache, tokens = carry
        out = model.decode(token[:, None], None, encoder_mask, cache, i)
        new = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
        new = jnp.where(done, c.pad_token_id, new)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], i, axis=1)
        return i + 1, new, done | (new == c.eos_token_id), out.cache, tokens

    carry = (jnp.int32(0), start, done, cache, tokens)
    return jax.lax.while_loop(cond, body, carry)[-1]


_t5_greedy_jit = jax.jit(t5_greedy, static_argnums=0, static_argnames="max_new_tokens")


class T5EncoderModel(nnx.Module):
    """The T5 encoder alone (Hugging Face's T5EncoderModel), with BertModel's interface:
    `embed`, `run_layers`, `finish`, `check_inputs`."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.shared = nnx.Embed(
            config.vocab_size,
            config.d_model,
            dtype=config.dtype,
            embedding_init=nnx.initializers.normal(1.0),
            rngs=rngs,
        )
        self.encoder = T5EncoderStack(config, rngs=rngs)

    def check_inputs(
        self, input_ids: Int[Array, "b t"], attention_mask: Int[Array, "b t"] | None = None
    ) -> None:
        _check_inputs(self.config, input_ids, attention_mask)

    def embed(
        self, input_ids: Int[Array, "b t"], *, rngs: nnx.Rngs | None = None
    ) -> Float[Array, "b t d"]:
        return dropout(self.shared(input_ids), self.config.dropout_rate, rngs)

    def run_layers(self, h, attention_mask, start=0, stop=None, **kw) -> EncoderOutput:
        """See `T5EncoderStack.run_layers`."""
        return self.encoder.run_layers(h, attention_mask, start, stop, **kw)

    def finish(self, h, *, rngs: nnx.Rngs | None = None):
        return self.encoder.finish(h, rngs=rngs)

    def __call__(
        self,
        input_ids: Int[Array, "b t"],
        attention_mask: Int[Array, "b t"] | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> EncoderOutput:
        return _encode(
            self, input_ids, attention_mask, output_hidden_states, output_attentions, rngs
        )
