"""Greedy KV-cached T5 generation: encode once, then the shared loop over the decoder.

`T5ForConditionalGeneration.generate` checks its inputs and calls `_t5_greedy_jit`;
`t5_greedy` is the pure function it jits, and `t5_greedy_from_encoder` the loop alone for
callers that already hold the encoder output (the seq2seq cascade).

Shape names: b batch, s encoder length, d model width, n new tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from elang_jax.models._decode import greedy_loop

if TYPE_CHECKING:  # the model module imports this one: no runtime import back
    from elang_jax.models._t5 import T5ForConditionalGeneration


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

    def step(i, prev, cache):
        # The token of column i - 1 (the start token at i = 0) sits at cache slot i.
        out = model.decode(prev[:, None], None, encoder_mask, cache, i)
        return out.logits[:, -1], out.cache, None

    return greedy_loop(
        step,
        cache,
        start_token=jnp.full((b,), c.decoder_start_token_id, jnp.int32),
        max_new_tokens=max_new_tokens,
        eos=c.eos_token_id,
        pad=c.pad_token_id,
        done=done,
    ).tokens


_t5_greedy_jit = jax.jit(t5_greedy, static_argnums=0, static_argnames="max_new_tokens")
