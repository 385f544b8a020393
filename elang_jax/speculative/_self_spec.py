"""Exact batched self-speculative greedy decoding for GPT-2 (LayerSkip's draft-and-verify).

Each verification call:
  1. drafts k tokens one at a time with the first L_d layers, the shared final norm and the
     shared LM head, writing those layers' keys and values into the cache; one more draft
     pass on the k-th drafted token fills its early-layer entries;
  2. verifies with the remaining layers only, over the k + 1 positions at once, starting
     from the draft's layer-L_d hidden states: the early layers' work (hidden states and KV
     entries) is the full model's own, so it is reused, not recomputed;
  3. keeps, per row, the longest drafted prefix that matches the full model's greedy choice
     plus the full model's next token (1 to k + 1 tokens).

Static shapes under `jit`: every row has its own cache slot (its accepted length) and its
own positions. A rejected draft leaves its keys and values in slots past the row's accepted
length; they are hidden by causality (a query sees slots up to its own) and the next call
overwrites them before any query can reach them: masked, not moved.

Prompts are left-padded, as for `GPT2LMHeadModel.generate`. Shape names: b batch, t prompt,
n new tokens, v vocabulary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Int

from elang_jax.models._decode import multi_token_loop
from elang_jax.models._gpt2 import GPT2LMHeadModel
from elang_jax.speculative._accept import accept_drafts, check_draft_room
from elang_jax.speculative._config import SpeculativeConfig
from elang_jax.speculative._output import SpeculativeOutput


def self_speculative_decode(
    model: GPT2LMHeadModel,
    input_ids: Int[Array, "b t"],
    attention_mask: Int[Array, "b t"],
    max_new_tokens: int,
    *,
    config: SpeculativeConfig,
    eos_token_id: Int[Array, ""] | int | None,
    pad_token_id: Int[Array, ""] | int,
) -> SpeculativeOutput:
    """Self-speculative greedy decoding as a pure function (no checks, no `jit` of its own);
    the tokens equal `greedy_decode`'s for every row."""
    b, t = input_ids.shape
    n, k, exit_at = max_new_tokens, config.k, config.draft_layers
    tr = model.transformer
    mask = attention_mask.astype(jnp.int32)
    # [b t]; padding gets position 0 (never attended to).
    position_ids = jnp.where(mask == 1, jnp.cumsum(mask, axis=1) - 1, 0)
    # k spare slots: a row at its last column still writes k + 1 slots.
    length = t + n + k
    # [b length]: every generated (or drafted) slot is real; causality hides the future.
    full_mask = jnp.concatenate([mask, jnp.ones((b, n + k), jnp.int32)], axis=1)
    prefill = model(
        input_ids, full_mask, position_ids, cache=model.init_cache(b, length), cache_index=0
    )
    first = jnp.argmax(prefill.logits[:, -1], axis=-1).astype(jnp.int32)
    last_pos = position_ids[:, -1]

    def step(produced, prev, cache):
        # The previous token (column produced - 1) goes into slot t + produced - 1.
        slot = t + produced - 1
        pos = last_pos + produced
        token, hiddens, drafts = prev, [], []
        for j in range(k + 1):
            h = tr.embed(token[:, None], (pos + j)[:, None])
            out = tr.run_layers(h, full_mask, 0, exit_at, cache=cache, cache_index=slot + j)
            cache = out.cache
            hiddens.append(out.last_hidden_state)
            if j < k:  # the last pass only fills the early layers' cache entries
                token = jnp.argmax(model.logits(out.last_hidden_state)[:, 0], axis=-1)
                token = token.astype(jnp.int32)
                drafts.append(token)
        # [b (k + 1) d]: the draft's layer-L_d states are the verifier's input.
        h = jnp.concatenate(hiddens, axis=1)
        out = tr.run_layers(h, full_mask, exit_at, None, cache=cache, cache_index=slot)
        # [b (k + 1)] the full model's greedy token after each position.
        verified = jnp.argmax(model.logits(out.last_hidden_state), axis=-1).astype(jnp.int32)
        tokens, counts, accepted = accept_drafts(jnp.stack(drafts, axis=1), verified)
        return tokens, counts, out.cache, accepted

    loop = multi_token_loop(
        step,
        prefill.cache,
        first_token=first,
        max_new_tokens=n,
        width=k + 1,
        eos=eos_token_id,
        pad=pad_token_id,
        extras=jnp.zeros((b,), jnp.int32),
    )
    return SpeculativeOutput.from_loop(loop, k)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "config"))
def _generate_jit(graphdef, state, input_ids, attention_mask, eos, pad, *, max_new_tokens, config):
    # split + jit + merge: the cheapest call path for a module under jit.
    model = nnx.merge(graphdef, state)
    return self_speculative_decode(
        model,
        input_ids,
        attention_mask,
        max_new_tokens,
        config=config,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def check_speculative(
    model: GPT2LMHeadModel,
    input_ids: ArrayLike,
    attention_mask: ArrayLike | None,
    max_new_tokens: int | np.integer,
    config: SpeculativeConfig,
) -> Int[ArrayLike, "b t"]:
    """`generate`'s prompt checks plus the draft's: returns the mask (ones when None)."""
    if not isinstance(config, SpeculativeConfig):
        raise TypeError(f"config must be a SpeculativeConfig, got {type(config).__name__}")
    config.check(model.config.n_layer)
    return check_draft_room(model.config, input_ids, attention_mask, max_new_tokens, config.k)


def speculative_generate_gpt2(
    model: GPT2LMHeadModel,
    input_ids: ArrayLike,  # [b t] left-padded; checked with messages that name it
    attention_mask: ArrayLike | None = None,  # [b t]
    max_new_tokens: int | np.integer = 20,
    *,
    config: SpeculativeConfig,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> SpeculativeOutput:
    """Self-speculative greedy decoding, compiled once per (shapes, max_new_tokens, config).

    The tokens are `model.generate`'s, row for row (same EOS and padding rules); the output
    also counts verification calls and accepted drafts per row.

    Args:
      config: the draft depth and the tokens drafted per call.
      eos_token_id, pad_token_id: override the model config's ids (None: use the config).
    """
    attention_mask = check_speculative(model, input_ids, attention_mask, max_new_tokens, config)
    eos = model.config.eos_token_id if eos_token_id is None else eos_token_id
    pad = model.config.generation_pad_id if pad_token_id is None else pad_token_id
    graphdef, state = nnx.split(model)
    return _generate_jit(
        graphdef,
        state,
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(attention_mask, jnp.int32),
        jnp.int32(-1 if eos is None else eos),
        jnp.int32(pad),
        max_new_tokens=int(max_new_tokens),
        config=config,
    )
