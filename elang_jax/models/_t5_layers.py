"""T5 building blocks: RMS layer norm, relative position buckets and bias, the pre-norm
layer, and the encoder and decoder stacks.

What sets these apart from the BERT family:
  * RMS layer norm without bias or mean subtraction, computed in float32 (`T5LayerNorm`);
    pre-norm layers with a final norm per stack;
  * no position embeddings: a learned relative position bias, owned by each stack and computed
    once per call, is added to the attention logits of every layer of that stack (HF keeps
    the table in block 0 and shares its output; same thing). Bidirectional buckets in the
    encoder, causal buckets in the decoder;
  * no 1/sqrt(k) scaling of attention logits (folded into the initialisation).

Shape names are those of `elang_jax.models._common`, plus s for the encoder length in the
decoder's cross-attention.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from elang_jax.core import LayerFn, StackState
from elang_jax.models._common import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    dropout,
    update_cache,
)
from elang_jax.models._decode import update_cache_rows
from elang_jax.models._outputs import EncoderOutput
from elang_jax.models._t5_config import T5Config

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
        # [d] -> [1 ... 1 d], y's rank
        scale = jnp.expand_dims(self.scale[...], tuple(range(y.ndim - 1)))
        return (scale * y).astype(self.dtype or x.dtype)


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
    relative_position: Int[Array, "*dims"],
    *,
    bidirectional: bool,
    num_buckets: int,
    max_distance: int,
) -> Int[Array, "*dims"]:
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
    """The learned [buckets, h] table of one stack (T5's encoder or decoder, MPNet's
    encoder), turned into [b h t s] logit biases."""

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

    def self_attention_bias(
        self,
        attention_mask: Int[Array, "b t"] | None,
        positions: Int[Array, "b t"] | None,
        length: int,
    ) -> Float[Array, "#b h t t"]:
        """The bias among `length` tokens at `positions` (their original columns, default
        0..length-1) with padding keys masked: computed once, shared by a stack's layers."""
        if positions is None:
            # [1 t]
            positions = jnp.arange(length, dtype=jnp.int32)[None]
        bias = self(positions, positions)
        keep = None if attention_mask is None else attention_mask[:, None, None, :].astype(bool)
        return _masked_bias(bias, keep)


def _masked_bias(
    position_bias: Float[Array, "#b h t s"], keep: Bool[Array, "#b 1 #t s"] | None
) -> Float[Array, "#b h t s"]:
    """Masked logits get the float32 minimum instead of bias + minimum: adding two minima
    (padding and causal) would overflow to -inf and turn a fully masked row into NaNs."""
    if keep is None:
        return position_bias
    return jnp.where(keep, position_bias, jnp.finfo(jnp.float32).min)


# ---------------------------------------------------------------------------
# Layers and stacks
# ---------------------------------------------------------------------------


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
        # Self-attention keys: t, or the cache length c; `s` is the source (cross_bias).
        bias: Float[Array, "#b h t _"],
        *,
        cache: KVCache | None = None,
        cache_index: Int[Array, ""] | Int[Array, " b"] | int | None = None,
        cross_kv: KVCache | None = None,
        cross_bias: Float[Array, "b 1 1 s"] | None = None,
        return_probs: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Float[Array, "b t d"], Float[Array, "b h t _"] | None, KVCache | None]:
        """One layer. With `cache`, the new keys/values are written at `cache_index` (one
        slot for every row, or [b] a slot per row: speculative decoding) and the queries
        attend over the whole cache (`bias` masks what is not yet written)."""
        x = self.attention_norm(h)
        kv = None
        if cache is not None:
            assert cache_index is not None, "a cache needs cache_index"
            k, v = self.attention.project_kv(x)
            if jnp.ndim(cache_index) == 1:
                cache = update_cache_rows(cache, k, v, jnp.asarray(cache_index))
            else:
                cache = update_cache(cache, k, v, cache_index)
            kv = (cache.key, cache.value)
        # Attention-probability dropout is folded into the output dropout (as in BertLayer).
        attn, probs = self.attention(x, bias, kv=kv, return_probs=return_probs)
        h = h + dropout(attn, self.dropout_rate, rngs)
        if self.cross_attention is not None:
            if cross_kv is None:
                raise ValueError("a decoder layer needs the encoder's keys and values (cross_kv)")
            assert self.cross_attention_norm is not None  # built with cross_attention
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
        return self.relative_bias.self_attention_bias(attention_mask, positions, length)

    def layer_fn(self, *, rngs: nnx.Rngs | None = None) -> LayerFn:
        """This stack as the layer-stack runner's `LayerFn` (`elang_jax.core.run_stack`).
        T5 is pre-norm: a layer's values are those of its normed input."""

        def run(i: int, state: StackState, want_probs: bool, want_values: bool):
            out = self.run_layers(
                state.h,
                state.mask,
                i,
                i + 1,
                positions=state.positions,
                output_attentions=want_probs,
                rngs=rngs,
            )
            values = None
            if want_values:
                layer = self.layers[i]
                values = layer.attention.values(layer.attention_norm(state.h))
            probs = out.attentions[0] if out.attentions is not None else None
            return out.last_hidden_state, probs, values

        return run

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
        assert config.num_decoder_layers is not None  # T5Config.__post_init__ resolves it
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
            assert layer.cross_attention is not None  # decoder layers all have one
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
        cache_index: Int[Array, ""] | int | None = None,
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
