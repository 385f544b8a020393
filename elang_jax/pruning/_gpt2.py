"""ACC token pruning of a GPT-2 prefill, and greedy generation from the pruned cache.

Prefill runs the prompt one layer at a time. Each layer keeps only the tokens its schedule
count allows, chosen by the previous layer's ACC scores (causal normalisation, the last
prompt token protected: its logits give the first new token). Layer l writes the keys and
values of the n_l tokens it processed into its own cache of n_l + m slots (m new tokens),
so the caches of different layers have different lengths and decoding attends over fewer
keys in the pruned layers.

Causality is carried by positions, not slots: every cache slot stores the original column
of its token (t + j for the j-th generated token), and `causal_bias` compares those, so a
pruned cache gives each new token exactly the keys that survived in that layer.

Prompts are left-padded, as for `GPT2LMHeadModel.generate`. Shape names: b batch, t prompt
length, m new tokens, n kept tokens, h heads, k head width, v vocabulary.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from elang_jax.core import StackState, run_stack
from elang_jax.models import GPT2LMHeadModel, KVCache
from elang_jax.models._decode import greedy_loop
from elang_jax.models._gpt2 import causal_bias
from elang_jax.pruning._schedule import KeepSchedule
from elang_jax.pruning._selector import AccSelector


@flax.struct.dataclass
class PrunedCache:
    """Per-layer KV caches of different lengths.

    Attributes:
      layers: one KVCache per layer, [b (n_l + m) h k]; slots n_l.. hold generated tokens.
      positions: per layer, [b (n_l + m)] each slot's causal position (original column).
      mask: per layer, [b (n_l + m)] 0 for kept padding, 1 otherwise.
      counts: n_l, the prompt tokens each layer kept (static).
    """

    layers: tuple[KVCache, ...]
    # One entry per layer; each layer's cache keeps its own number of columns.
    positions: tuple[Int[Array, "b _"], ...]
    mask: tuple[Int[Array, "b _"], ...]
    counts: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())


@flax.struct.dataclass
class PrefillOutput:
    """Logits of the last prompt token, the pruned cache, and where generation continues.

    Attributes:
      logits: [b v] next-token logits after the prompt.
      cache: the pruned cache.
      next_position: [b] position id (for the position embedding) of the first new token.
    """

    logits: Float[Array, "b v"]
    cache: PrunedCache
    next_position: Int[Array, " b"]


def acc_prefill(
    model: GPT2LMHeadModel,
    input_ids: Int[Array, "b t"],
    attention_mask: Int[Array, "b t"],
    schedule: KeepSchedule,
    max_new_tokens: int,
) -> PrefillOutput:
    """Pruned prefill of a left-padded prompt (time to first token).

    With `schedule.rate == 1.0` the logits and cache contents equal the unpruned prefill's.
    """
    transformer = model.transformer
    cfg = schedule.config
    if schedule.num_layers != len(transformer.layers):
        raise ValueError(
            f"the schedule is for {schedule.num_layers} layers, the model has "
            f"{len(transformer.layers)}"
        )
    if cfg.keep_last < 1:
        raise ValueError("GPT-2 prefill needs the last prompt token: use keep_last >= 1")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    b, t = input_ids.shape
    m = max_new_tokens
    mask = attention_mask.astype(jnp.int32)
    # [b t]; as in `greedy_decode`: padding gets position 0, never attended to.
    position_ids = jnp.where(mask == 1, jnp.cumsum(mask, axis=1) - 1, 0)
    h = transformer.embed(input_ids, position_ids)
    # [b m]: generated tokens come after every prompt column and are always real.
    new_positions = jnp.broadcast_to(t + jnp.arange(m, dtype=jnp.int32), (b, m))
    new_mask = jnp.ones((b, m), jnp.int32)
    dtype = transformer.config.dtype or jnp.float32
    heads, head_dim = transformer.config.n_head, transformer.config.head_dim

    counts = schedule.counts(t)
    caches, cache_positions, cache_masks = [], [], []

    def layer_fn(i, state, want_probs, want_values):
        # Layer i writes the keys and values of the n tokens it runs into its own cache.
        n = state.h.shape[1]
        key_positions = jnp.concatenate([state.positions, new_positions], axis=1)
        key_mask = jnp.concatenate([state.mask, new_mask], axis=1)
        # [b (n + m) h k]
        empty = jnp.zeros((b, n + m, heads, head_dim), dtype)
        h, probs, cache = transformer.layers[i](
            state.h,
            causal_bias(state.positions, key_positions, key_mask),
            cache=KVCache(key=empty, value=empty),
            cache_index=0,
            return_probs=want_probs,
        )
        caches.append(cache)
        cache_positions.append(key_positions)
        cache_masks.append(key_mask)
        # ACC scores the prompt tokens only: the generated slots are still empty.
        probs = probs[..., :n] if want_probs and probs is not None else None
        values = cache.value[:, :n] if want_values else None
        return h, probs, values

    state, _ = run_stack(
        layer_fn, StackState.start(h, mask), 0, len(counts), counts, AccSelector(schedule)
    )
    h = state.h
    logits = model.logits(h[:, -1:])[:, 0]
    return PrefillOutput(
        logits=logits,
        cache=PrunedCache(
            layers=tuple(caches),
            positions=tuple(cache_positions),
            mask=tuple(cache_masks),
            counts=counts,
        ),
        next_position=position_ids[:, -1] + 1,
    )


def acc_decode_step(
    model: GPT2LMHeadModel,
    token: Int[Array, " b"],
    position: Int[Array, " b"],
    step: Int[Array, ""] | int,
    cache: PrunedCache,
    prompt_length: int,
) -> tuple[Float[Array, "b v"], PrunedCache]:
    """One new token through the pruned cache: the `step`-th generated token (from 0), with
    position-embedding id `position`, is written at slot n_l + step of every layer."""
    transformer = model.transformer
    b = token.shape[0]
    h = transformer.embed(token[:, None], position[:, None])
    # [b 1]: causal position of the new token, after the prompt.
    query = jnp.broadcast_to(prompt_length + jnp.asarray(step, jnp.int32), (b, 1))
    layers = []
    for i, n in enumerate(cache.counts):
        bias = causal_bias(query, cache.positions[i], cache.mask[i])
        h, _, layer_cache = transformer.layers[i](
            h, bias, cache=cache.layers[i], cache_index=n + step
        )
        layers.append(layer_cache)
    logits = model.logits(h)[:, 0]
    return logits, dataclasses.replace(cache, layers=tuple(layers))


def acc_generate(
    model: GPT2LMHeadModel,
    input_ids: Int[Array, "b t"],
    attention_mask: Int[Array, "b t"],
    schedule: KeepSchedule,
    max_new_tokens: int,
    *,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Int[Array, "b m"]:
    """Greedy generation after a pruned prefill through the shared `greedy_loop` (pad after
    EOS, stop once every row is done). A pure function: call it under `jax.jit` on a merged
    model for speed. With `schedule.rate == 1.0` the tokens equal `model.generate(...)`'s."""
    config = model.config
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    pad = config.generation_pad_id if pad_token_id is None else pad_token_id
    t = input_ids.shape[1]
    prefill = acc_prefill(model, input_ids, attention_mask, schedule, max_new_tokens)
    first = jnp.argmax(prefill.logits, axis=-1).astype(jnp.int32)

    def step(i, prev, state):
        cache, position = state
        # Token i - 1 is written at generated slot i - 1; its logits give token i.
        logits, cache = acc_decode_step(model, prev, position, i - 1, cache, t)
        return logits, (cache, position + 1), None

    return greedy_loop(
        step,
        (prefill.cache, prefill.next_position),
        first_token=first,
        max_new_tokens=max_new_tokens,
        eos=eos,
        pad=pad,
    ).tokens
