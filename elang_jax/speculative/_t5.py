"""Exact batched self-speculative greedy decoding for the T5 decoder.

The same draft-and-verify call as `_self_spec` (GPT-2): the first L_d decoder layers, the
decoder's final norm and the LM head draft k tokens; the remaining layers verify the k + 1
positions in one pass from the draft's layer-L_d states, reusing its keys and values. Each
row keeps its own cache slot; rejected entries are hidden causally and overwritten later.

Decoding starts as `T5ForConditionalGeneration.generate` does: the decoder start token at
slot 0 (one full-model call picks column 0), then column i's token sits at slot i + 1.
T5's relative position bias is computed per row from the rows' own query slots.

Shape names: b batch, s source tokens, n new tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int

from elang_jax.models._decode import multi_token_loop
from elang_jax.models._t5 import T5ForConditionalGeneration
from elang_jax.models._t5_layers import _masked_bias
from elang_jax.speculative._accept import accept_drafts
from elang_jax.speculative._config import SpeculativeConfig
from elang_jax.speculative._output import SpeculativeOutput


def _layers(
    model: T5ForConditionalGeneration,
    h: Float[Array, "b t d"],
    start: int,
    stop: int,
    cache,
    slot: Int[Array, " b"],
    cross_bias: Float[Array, "b 1 1 s"],
):
    """Decoder layers [start, stop) on tokens at per-row slots slot..slot+t-1."""
    dec = model.decoder
    t = h.shape[1]
    c = cache.self_attention[0].key.shape[1]
    steps = jnp.arange(t, dtype=jnp.int32)
    # [b t] each row's query slots; [b c] every cache slot.
    query_pos = slot[:, None] + steps[None, :]
    key_pos = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32)[None], (h.shape[0], c))
    # [b 1 t c] causal by slot: a row's rejected drafts past its slot stay hidden.
    causal = (key_pos[:, None, :] <= query_pos[:, :, None])[:, None]
    bias = _masked_bias(dec.relative_bias(query_pos, key_pos), causal)
    self_cache = list(cache.self_attention)
    for i in range(start, stop):
        h, _, self_cache[i] = dec.layers[i](
            h,
            bias,
            cache=self_cache[i],
            cache_index=slot,
            cross_kv=cache.cross_attention[i],
            cross_bias=cross_bias,
        )
    return h, cache.replace(self_attention=tuple(self_cache))


def t5_self_speculative_decode(
    model: T5ForConditionalGeneration,
    input_ids: Int[Array, "b s"],
    attention_mask: Int[Array, "b s"],
    max_new_tokens: int,
    *,
    config: SpeculativeConfig,
) -> SpeculativeOutput:
    """Self-speculative greedy T5 decoding as a pure function (no checks, no `jit`); the
    tokens equal `T5ForConditionalGeneration.generate`'s."""
    c = model.config
    b = input_ids.shape[0]
    n, k, exit_at = max_new_tokens, config.k, config.draft_layers
    num_layers = len(model.decoder.layers)
    enc = model.encode(input_ids, attention_mask).last_hidden_state
    cache = model.init_cache(b, n + k + 1, enc)
    # [b 1 1 s]
    keep = attention_mask[:, None, None, :].astype(bool)
    cross_bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min)

    def logits(h):
        return model.lm_logits(model.decoder.final_norm(h))

    start = jnp.full((b,), c.decoder_start_token_id, jnp.int32)
    zero = jnp.zeros((b,), jnp.int32)
    h, cache = _layers(model, model.embed(start[:, None]), 0, num_layers, cache, zero, cross_bias)
    first = jnp.argmax(logits(h)[:, 0], axis=-1).astype(jnp.int32)

    def step(produced, prev, cache):
        # Column produced - 1 (the previous token) sits at slot `produced`.
        slot = produced
        token, hiddens, drafts = prev, [], []
        for j in range(k + 1):
            h, cache = _layers(
                model, model.embed(token[:, None]), 0, exit_at, cache, slot + j, cross_bias
            )
            hiddens.append(h)
            if j < k:  # the last pass only caches the k-th draft's keys and values
                token = jnp.argmax(logits(h)[:, 0], axis=-1).astype(jnp.int32)
                drafts.append(token)
        # [b (k + 1) d] the draft's layer-L_d states are the verifier's input.
        h = jnp.concatenate(hiddens, axis=1)
        h, cache = _layers(model, h, exit_at, num_layers, cache, slot, cross_bias)
        verified = jnp.argmax(logits(h), axis=-1).astype(jnp.int32)
        tokens, counts, accepted = accept_drafts(jnp.stack(drafts, axis=1), verified)
        return tokens, counts, cache, accepted

    loop = multi_token_loop(
        step,
        cache,
        first_token=first,
        max_new_tokens=n,
        width=k + 1,
        eos=c.eos_token_id,
        pad=c.pad_token_id,
        extras=jnp.zeros((b,), jnp.int32),
    )
    return SpeculativeOutput.from_loop(loop, k)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "config"))
def _t5_jit(graphdef, state, input_ids, attention_mask, *, max_new_tokens, config):
    return t5_self_speculative_decode(
        nnx.merge(graphdef, state), input_ids, attention_mask, max_new_tokens, config=config
    )


def speculative_generate_t5(
    model: T5ForConditionalGeneration,
    input_ids: ArrayLike,  # [b s]; checked with messages that name it
    attention_mask: ArrayLike | None = None,  # [b s]
    max_new_tokens: int | np.integer = 20,
    *,
    config: SpeculativeConfig,
) -> SpeculativeOutput:
    """Self-speculative greedy T5 decoding, compiled once per (shapes, max_new_tokens,
    config); the tokens are `model.generate`'s, row for row."""
    if not isinstance(config, SpeculativeConfig):
        raise TypeError(f"config must be a SpeculativeConfig, got {type(config).__name__}")
    config.check(len(model.decoder.layers))
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int | np.integer)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    model.check_inputs(input_ids, attention_mask)
    if attention_mask is None:
        attention_mask = np.ones(np.shape(input_ids), np.int32)
    graphdef, state = nnx.split(model)
    return _t5_jit(
        graphdef,
        state,
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(attention_mask, jnp.int32),
        max_new_tokens=int(max_new_tokens),
        config=config,
    )
