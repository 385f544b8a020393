"""T5 encoder-decoder (T5 v1.0, T5 v1.1, Flan-T5) in Flax NNX, with greedy KV-cached decoding.

This module holds the models; the pieces live in private siblings and are re-exported here,
the import path the rest of the library uses:
  * `_t5_config`: `T5Config`;
  * `_t5_layers`: RMS norm, relative position buckets and bias, layers and stacks (what sets
    T5 apart from the BERT family is described there);
  * `_t5_generate`: greedy generation (`t5_greedy`, `t5_greedy_from_encoder`).

v1.0 ties the LM head to the embeddings and scales the decoder output by d_model**-0.5;
v1.1 / Flan-T5 has its own untied head and no scaling.

The encoder exposes what the adaptive-compute methods need, like `BertModel`:
  * `embed` then `encoder.run_layers(h, mask, start, stop, positions=...)`: any range of
    layers on any subset of tokens. The relative bias is computed from `positions`, the
    tokens' original positions, so a gathered subset with its positions sees exactly the
    biases it saw in the full sequence;
  * per-layer hidden states and attention probabilities on request;
  * `layer.ffn`, a pluggable feed-forward module (MoE layers replace it).

Decoding is functional: `decode(..., cache, cache_index)` returns the new cache in
`LMOutput.cache` and never mutates NNX state, so it runs inside jitted loops. The
self-attention cache has a static length; the cross-attention keys/values are computed once
from the encoder output and carried in the same cache.

Greedy generation runs under `jax.jit` as the pure function `t5_greedy(graphdef, state, ...)`;
`T5ForConditionalGeneration.generate` splits the model and calls its jitted form.

Shape names are those of `elang_jax.models._common`, plus s for the encoder length in the
decoder's cross-attention and n for the number of generated tokens.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int

from elang_jax.models._common import (
    KVCache,
    check_mask,
    check_token_ids,
    dropout,
    is_concrete,
)
from elang_jax.models._outputs import EncoderOutput, LMOutput
from elang_jax.models._t5_config import T5Config
from elang_jax.models._t5_generate import _t5_greedy_jit, t5_greedy, t5_greedy_from_encoder
from elang_jax.models._t5_layers import (
    RelativePositionBias,
    T5DecoderStack,
    T5EncoderStack,
    T5Layer,
    T5LayerNorm,
    relative_position_bucket,
)
from elang_jax.models._t5_layers import _masked_bias as _masked_bias  # tests import it from here

__all__ = [
    "RelativePositionBias",
    "T5Config",
    "T5DecoderCache",
    "T5DecoderStack",
    "T5EncoderModel",
    "T5EncoderStack",
    "T5ForConditionalGeneration",
    "T5Layer",
    "T5LayerNorm",
    "relative_position_bucket",
    "t5_greedy",
    "t5_greedy_from_encoder",
]


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


def _check_inputs(config: T5Config, input_ids, attention_mask, name: str = "input_ids") -> None:
    check_token_ids(input_ids, config.vocab_size, name)
    if attention_mask is not None:
        check_mask(attention_mask, np.shape(input_ids))


def _encode(
    model: T5ForConditionalGeneration | T5EncoderModel,
    input_ids: ArrayLike,
    attention_mask: ArrayLike | None,
    output_hidden_states: bool,
    output_attentions: bool,
    rngs: nnx.Rngs | None,
) -> EncoderOutput:
    _check_inputs(model.config, input_ids, attention_mask)
    # Host (numpy) inputs become device arrays here, once, for the layers below.
    input_ids = jnp.asarray(input_ids)
    attention_mask = None if attention_mask is None else jnp.asarray(attention_mask)
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
    return dataclasses.replace(out, last_hidden_state=last, hidden_states=hiddens)


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

    def check_inputs(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None) -> None:
        """Shape, dtype and (for concrete arrays) value checks with messages that name them."""
        _check_inputs(self.config, input_ids, attention_mask)

    def embed(
        self, input_ids: Int[Array, "b t"], *, rngs: nnx.Rngs | None = None
    ) -> Float[Array, "b t d"]:
        """Token embeddings (shared by encoder and decoder); T5 adds no positions here."""
        return dropout(self.shared(input_ids), self.config.dropout_rate, rngs)

    def encode(
        self,
        # [b t] each; any array: `check_inputs` reports wrong shapes and dtypes by name.
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
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
        assert c.num_decoder_layers is not None  # T5Config.__post_init__ resolves it
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
        # [b t], [b s d], [b s]; any arrays: wrong shapes and dtypes are reported by name.
        decoder_input_ids: ArrayLike,
        encoder_hidden: Array | None,
        encoder_mask: ArrayLike | None = None,
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
        decoder_input_ids = jnp.asarray(decoder_input_ids)  # host (numpy) ids, once
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
            encoder_mask = jnp.asarray(encoder_mask)
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
            assert self_cache is not None  # the decoder returns the cache it was given
            new_cache = T5DecoderCache(self_attention=self_cache, cross_attention=cross)
        return LMOutput(
            logits=self.lm_logits(h), hidden_states=hiddens, attentions=attns, cache=new_cache
        )

    def __call__(
        self,
        # [b s] each; any array: `check_inputs` reports wrong shapes and dtypes by name.
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
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
        # Checked by `encode`; a device array for the decoder's cross-attention.
        attention_mask = None if attention_mask is None else jnp.asarray(attention_mask)
        out = self.decode(
            decoder_input_ids,
            enc.last_hidden_state,
            attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        return dataclasses.replace(out, encoder=enc)

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
        input_ids: ArrayLike,  # [b s]; checked with messages that name it
        attention_mask: ArrayLike | None = None,  # [b s]
        max_new_tokens: int | np.integer = 20,
    ) -> Int[Array, "b n"]:
        """Greedy decoding under `jax.jit`: int32 [b, max_new_tokens]; after a row's EOS, pad.

        Eager callers get the input checks; the work runs in the jitted `t5_greedy`.
        """
        self.check_inputs(input_ids, attention_mask)
        if attention_mask is None:
            attention_mask = jnp.ones(np.shape(input_ids), jnp.int32)
        graphdef, state = nnx.split(self)
        return _t5_greedy_jit(
            graphdef, state, input_ids, attention_mask, max_new_tokens=int(max_new_tokens)
        )


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

    def check_inputs(self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None) -> None:
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
        # [b t] each; any array: `check_inputs` reports wrong shapes and dtypes by name.
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> EncoderOutput:
        return _encode(
            self, input_ids, attention_mask, output_hidden_states, output_attentions, rngs
        )
