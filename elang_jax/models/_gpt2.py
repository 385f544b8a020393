"""GPT-2 decoder in Flax NNX: backbone and causal-LM head with a functional KV cache.

The backbone exposes what the adaptive-compute methods need:
  * `embed` then `run_layers(h, mask, start, stop, positions=...)`: run any range of layers on
    any subset of tokens. Positions enter twice: the learned position embedding is added at
    `embed`, and the causal mask is built from `positions` (each token's original index), so a
    gathered subset of hidden states with its positions is a valid input to any later layer;
  * per-layer hidden states and attention probabilities on request;
  * `layer.ffn`, a pluggable feed-forward module (MoE layers replace it);
  * a functional KV cache: `init_cache` returns one `KVCache` per layer, every call that takes
    a cache returns the updated one, and no NNX state changes during decoding, so the decode
    loop runs inside `jax.jit` and the shared greedy loop (`elang_jax.models._decode`).

The configuration lives in `_gpt2_config`, greedy generation in `_gpt2_generate`; both are
re-exported here, the import path the rest of the library uses.

Shape names follow `elang_jax.models._common` (b t s d h k f v l c); `n` is the number of new
tokens in generation.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int

from elang_jax.models._common import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    check_length,
    check_mask,
    check_token_ids,
    dropout,
    is_concrete,
    update_cache,
)
from elang_jax.models._decode import update_cache_rows
from elang_jax.models._gpt2_config import GPT2Config
from elang_jax.models._gpt2_generate import _generate_jit, greedy_decode
from elang_jax.models._outputs import EncoderOutput, LMOutput

__all__ = [
    "Cache",
    "DecoderOutput",
    "GPT2Block",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2Model",
    "causal_bias",
    "greedy_decode",
]

# One KVCache per layer of the whole stack (also when only a range of layers runs).
Cache = tuple[KVCache, ...]


@flax.struct.dataclass
class DecoderOutput(EncoderOutput):
    """`EncoderOutput` of a decoder stack plus the updated KV cache (None without a cache).

    Attention probabilities are [b h t s] where s is t without a cache and c with one.
    """

    cache: Cache | None = None


def check_prompt(
    config: GPT2Config,
    # [b t] each; any array: wrong shapes and dtypes are what this reports, by name.
    input_ids: ArrayLike,
    attention_mask: ArrayLike | None,
    max_new_tokens: int | np.integer,
) -> Int[ArrayLike, "b t"]:
    """The checks every GPT-2 generation path runs on its prompt; returns the mask (all ones
    when None). Prompts must be left-padded: a row whose last column is padding (right
    padding, or an all-zero row) would generate from a pad token."""
    check_token_ids(input_ids, config.vocab_size)
    b, t = np.shape(input_ids)
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int | np.integer)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    check_length(t + int(max_new_tokens), config.n_positions, "prompt + max_new_tokens")
    if attention_mask is None:
        attention_mask = jnp.ones((b, t), jnp.int32)
    check_mask(attention_mask, (b, t))
    if is_concrete(attention_mask) and not np.all(np.asarray(attention_mask)[:, -1]):
        raise ValueError(
            "generate needs left-padded prompts: the last column of attention_mask must be "
            "1 for every row (pad on the left, as Hugging Face does for decoder-only models)"
        )
    return attention_mask


def causal_bias(
    query_positions: Int[Array, "b t"],
    key_positions: Int[Array, "b s"],
    key_mask: Int[Array, "b s"] | None = None,
) -> Float[Array, "b 1 t s"]:
    """Additive bias letting each query see keys at positions <= its own that are not padding.

    Built from positions, not array indices, so that a gathered (even reordered) subset of
    tokens keeps exactly the attention pattern it had in the full sequence.
    """
    # [b t s]
    allowed = key_positions[:, None, :] <= query_positions[:, :, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, :].astype(bool)
    # [b 1 t s]; a query with no visible key (left padding) gets a uniform, finite softmax.
    return jnp.where(allowed[:, None], 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)


def _layer_norm(config: GPT2Config, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        config.n_embd, epsilon=config.layer_norm_epsilon, dtype=config.dtype, rngs=rngs
    )


class GPT2Block(nnx.Module):
    """Pre-norm layer: h = h + Attn(LN(h)); h = h + FFN(LN(h))."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        self.ln_1 = _layer_norm(config, rngs)
        self.attention = MultiHeadAttention(
            config.n_embd,
            config.n_head,
            config.head_dim,
            use_bias=True,
            scale=1.0 / math.sqrt(config.head_dim),
            dtype=config.dtype,
            rngs=rngs,
        )
        self.ln_2 = _layer_norm(config, rngs)
        self.ffn = FeedForward(
            config.n_embd,
            config.d_ff,
            activation=config.activation_function,
            dtype=config.dtype,
            rngs=rngs,
        )
        self.resid_dropout = config.resid_dropout

    def __call__(
        self,
        h: Float[Array, "b t d"],
        bias: Float[Array, "b 1 t s"],
        *,
        cache: KVCache | None = None,
        cache_index: Int[Array, ""] | Int[Array, " b"] | int | None = None,
        return_probs: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Float[Array, "b t d"], Float[Array, "b h t s"] | None, KVCache | None]:
        """`cache_index` is one slot for every row, or [b] a slot per row (speculative
        decoding, where each row has accepted a different number of tokens)."""
        x = self.ln_1(h)
        k, v = self.attention.project_kv(x)
        if cache is not None:
            assert cache_index is not None, "a cache needs cache_index"
            # The new keys land in their slots first, so the queries see themselves.
            if jnp.ndim(cache_index) == 1:
                cache = update_cache_rows(cache, k, v, jnp.asarray(cache_index))
            else:
                cache = update_cache(cache, k, v, cache_index)
            k, v = cache.key, cache.value
        # Attention-probability dropout (attn_dropout) is folded into the residual dropout,
        # as in BertLayer: HF drops the probabilities themselves; only training differs.
        attn, probs = self.attention(x, bias, kv=(k, v), return_probs=return_probs)
        h = h + dropout(attn, self.resid_dropout, rngs)
        h = h + dropout(self.ffn(self.ln_2(h)), self.resid_dropout, rngs)
        return h, probs, cache


class GPT2Model(nnx.Module):
    """The decoder backbone: token and position embeddings, `GPT2Block`s, final norm `ln_f`."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.normal(0.02)  # GPT-2's initializer_range
        kw = dict(dtype=config.dtype, embedding_init=init, rngs=rngs)
        self.wte = nnx.Embed(config.vocab_size, config.n_embd, **kw)
        self.wpe = nnx.Embed(config.n_positions, config.n_embd, **kw)
        self.layers = nnx.List([GPT2Block(config, rngs=rngs) for _ in range(config.n_layer)])
        self.ln_f = _layer_norm(config, rngs)

    # -- inputs ------------------------------------------------------------------------------

    def check_inputs(
        self,
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        position_ids: ArrayLike | None = None,
        *,
        cache: Cache | None = None,
        cache_index: Int[Array, ""] | int | None = None,
    ) -> None:
        """Shape, dtype and (for concrete arrays) value checks with messages that name them."""
        check_token_ids(input_ids, self.config.vocab_size)
        b, t = np.shape(input_ids)
        check_length(t, self.config.n_positions)
        if position_ids is not None:
            check_mask(position_ids, (b, t), "position_ids")
            if is_concrete(position_ids) and np.size(position_ids):
                pos = np.asarray(position_ids)
                if pos.min() < 0 or pos.max() >= self.config.n_positions:
                    raise ValueError(
                        f"position_ids must lie in [0, {self.config.n_positions}), got values "
                        f"from {pos.min()} to {pos.max()}"
                    )
        if cache is None:
            if cache_index is not None:
                raise ValueError("cache_index was given without a cache")
            if attention_mask is not None:
                check_mask(attention_mask, (b, t))
            return
        c = self.check_cache(cache, b)
        if cache_index is None:
            raise ValueError("a cache needs cache_index, the slot of the first new token")
        if is_concrete(cache_index):
            index = int(cache_index)
            if index < 0 or index + t > c:
                raise ValueError(
                    f"writing {t} tokens at cache_index {index} overflows the cache of length {c}"
                )
        if attention_mask is not None:
            # With a cache the mask covers every cache slot: padding of the prompt, 1 for
            # every real or future token (slots not yet written are hidden causally).
            check_mask(attention_mask, (b, c), "attention_mask (one entry per cache slot)")

    def check_cache(self, cache: Cache, batch: int) -> int:
        """Checks the cache's structure against the model; returns its length c."""
        if len(cache) != len(self.layers):
            raise ValueError(f"cache has {len(cache)} layers, the model {len(self.layers)}")
        want = (batch, None, self.config.n_head, self.config.head_dim)
        shape = tuple(cache[0].key.shape)
        if len(shape) != 4 or any(
            w is not None and w != s for w, s in zip(want, shape, strict=True)
        ):
            raise ValueError(
                f"cache entries must have shape [batch={batch}, length, {self.config.n_head}, "
                f"{self.config.head_dim}], got {shape}"
            )
        return shape[1]

    def init_cache(self, batch: int, max_length: int) -> Cache:
        """An empty cache for `max_length` tokens (prompt plus generated), one entry per layer."""
        check_length(max_length, self.config.n_positions, "cache")
        dtype = self.config.dtype or jnp.float32
        # [b c h k]
        shape = (batch, max_length, self.config.n_head, self.config.head_dim)
        return tuple(
            KVCache(key=jnp.zeros(shape, dtype), value=jnp.zeros(shape, dtype)) for _ in self.layers
        )

    # -- pieces --------------------------------------------------------------------------------

    def embed(
        self,
        input_ids: Int[Array, "b t"],
        position_ids: Int[Array, "b t"] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> Float[Array, "b t d"]:
        """Token plus position embeddings; positions default to 0..t-1."""
        if position_ids is None:
            position_ids = jnp.broadcast_to(
                jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape
            )
        h = self.wte(input_ids) + self.wpe(position_ids)
        return dropout(h, self.config.embd_dropout, rngs)

    def run_layers(
        self,
        h: Float[Array, "b t d"],
        attention_mask: Int[Array, "b t"] | Int[Array, "b c"] | None,
        start: int = 0,
        stop: int | None = None,
        *,
        positions: Int[Array, "b t"] | None = None,
        cache: Cache | None = None,
        cache_index: Int[Array, ""] | Int[Array, " b"] | int | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> DecoderOutput:
        """Runs layers [start, stop) on hidden states `h` (any subset of a sequence's tokens).

        Args:
          attention_mask: [b t] keep-mask of the tokens in `h`; with a cache, [b c], one entry
            per cache slot.
          positions: [b t] each token's position in the original sequence (without a cache)
            or its cache slot (with one), used only for causality. Default 0..t-1, or
            cache_index..cache_index+t-1 with a cache. Token pruning passes the positions of
            the tokens it kept; they need not be sorted.
          cache: the whole stack's cache (one entry per layer); entries [start, stop) are
            updated at slots cache_index..cache_index+t-1 and returned in `.cache`.
          cache_index: the first new token's slot, one for all rows or [b] one per row.

        Returns:
          `DecoderOutput` with the last layer's raw output (no final norm); `hidden_states`,
          when asked for, holds the input `h` followed by each layer's output.
        """
        n = len(self.layers)
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise ValueError(f"layer range [{start}, {stop}) is outside [0, {n}]")
        b, t = h.shape[:2]
        if positions is not None:
            check_mask(positions, (b, t), "positions")
        if cache is None:
            if cache_index is not None:
                raise ValueError("cache_index was given without a cache")
            if attention_mask is not None:
                check_mask(attention_mask, (b, t))
            query_pos = (
                jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
                if positions is None
                else positions
            )
            key_pos = query_pos
        else:
            if cache_index is None:
                raise ValueError("a cache needs cache_index, the slot of the first new token")
            c = self.check_cache(cache, b)
            if attention_mask is not None:
                check_mask(attention_mask, (b, c), "attention_mask (one entry per cache slot)")
            # [b t] from per-row start slots, or [t] from one slot shared by every row.
            first = jnp.asarray(cache_index, jnp.int32)
            steps = jnp.arange(t, dtype=jnp.int32)
            slots = first[:, None] + steps[None, :] if first.ndim == 1 else first + steps
            query_pos = jnp.broadcast_to(slots, (b, t)) if positions is None else positions
            key_pos = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (b, c))
        bias = causal_bias(query_pos, key_pos, attention_mask)

        new_cache = None if cache is None else list(cache)
        hiddens, attns = [h], []
        for i in range(start, stop):
            h, probs, layer_cache = self.layers[i](
                h,
                bias,
                cache=None if cache is None else cache[i],
                cache_index=cache_index,
                return_probs=output_attentions,
                rngs=rngs,
            )
            if new_cache is not None:
                assert layer_cache is not None  # a layer given a cache returns it
                new_cache[i] = layer_cache
            hiddens.append(h)
            attns.append(probs)
        return DecoderOutput(
            last_hidden_state=h,
            hidden_states=tuple(hiddens) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
            cache=None if new_cache is None else tuple(new_cache),
        )

    def __call__(
        self,
        # [b t] (attention_mask [b c] with a cache); any array: `check_inputs` reports
        # wrong shapes and dtypes by name.
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        position_ids: ArrayLike | None = None,
        *,
        cache: Cache | None = None,
        cache_index: Int[Array, ""] | int | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> DecoderOutput:
        """Full stack plus `ln_f`.

        `position_ids` (for the position embedding) default to 0..t-1, offset by cache_index
        with a cache, as in Hugging Face; left-padded batches should pass cumsum(mask) - 1.
        As in Hugging Face, the last entry of `hidden_states` is after `ln_f`.
        """
        self.check_inputs(
            input_ids, attention_mask, position_ids, cache=cache, cache_index=cache_index
        )
        # Host (numpy) inputs become device arrays here, once, for the layers below.
        input_ids = jnp.asarray(input_ids)
        attention_mask = None if attention_mask is None else jnp.asarray(attention_mask)
        position_ids = None if position_ids is None else jnp.asarray(position_ids)
        if position_ids is None:
            offset = 0 if cache is None else cache_index
            assert offset is not None  # check_inputs: a cache comes with cache_index
            position_ids = jnp.broadcast_to(
                offset + jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape
            )
        h = self.embed(input_ids, position_ids, rngs=rngs)
        out = self.run_layers(
            h,
            attention_mask,
            cache=cache,
            cache_index=cache_index,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        last = self.ln_f(out.last_hidden_state)
        hidden = None if out.hidden_states is None else (*out.hidden_states[:-1], last)
        return dataclasses.replace(out, last_hidden_state=last, hidden_states=hidden)


class GPT2LMHeadModel(nnx.Module):
    """GPT-2 backbone plus the LM head, tied to the token embedding `transformer.wte`."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs):
        self.config = config
        self.transformer = GPT2Model(config, rngs=rngs)

    def logits(
        self, h: Float[Array, "b t d"], *, apply_final_norm: bool = True
    ) -> Float[Array, "b t v"]:
        """Float32 logits from hidden states; exits pass any layer's raw output, which goes
        through the shared final norm `ln_f` first."""
        if apply_final_norm:
            h = self.transformer.ln_f(h)
        # [b t d] x [v d] -> [b t v]
        return self.transformer.wte.attend(h).astype(jnp.float32)

    def init_cache(self, batch: int, max_length: int) -> Cache:
        return self.transformer.init_cache(batch, max_length)

    def __call__(
        self,
        # [b t] (attention_mask [b c] with a cache); any array: `check_inputs` reports
        # wrong shapes and dtypes by name.
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        position_ids: ArrayLike | None = None,
        *,
        cache: Cache | None = None,
        cache_index: Int[Array, ""] | int | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> LMOutput:
        """Next-token logits for every position.

        Without a cache, `attention_mask` is [b t]. With a cache (from `init_cache`) the new
        tokens are written at slots cache_index..cache_index+t-1, `attention_mask` is [b c]
        (one entry per slot) and the updated cache is returned in `.cache`; the input cache
        is not modified, so the call is pure and can run inside `jit` and loops.
        """
        out = self.transformer(
            input_ids,
            attention_mask,
            position_ids,
            cache=cache,
            cache_index=cache_index,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        return LMOutput(
            logits=self.logits(out.last_hidden_state, apply_final_norm=False),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cache=out.cache,
        )

    def generate(
        self,
        input_ids: ArrayLike,  # [b t]; checked with messages that name it
        attention_mask: ArrayLike | None = None,  # [b t]
        max_new_tokens: int | np.integer = 20,
        *,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> Int[Array, "b n"]:
        """Greedy decoding with a KV cache, compiled once per (shapes, max_new_tokens).

        Prompts must be left-padded; positions are cumsum(mask) - 1 as in Hugging Face's
        `generate`. After a sequence emits EOS it emits the pad id (pad_token_id, else
        eos_token_id), so the output always has `max_new_tokens` columns.

        Works eagerly and inside `jax.jit` on a module rebuilt with `nnx.merge` (the checks
        on values are then skipped). `greedy_decode` is the same loop as a pure function
        without checks or its own `jit`.

        Args:
          eos_token_id, pad_token_id: override the config's ids (None: use the config).

        Returns:
          int32 [b n] generated tokens, the prompt not included.
        """
        attention_mask = check_prompt(self.config, input_ids, attention_mask, max_new_tokens)
        eos = self.config.eos_token_id if eos_token_id is None else eos_token_id
        pad = self.config.generation_pad_id if pad_token_id is None else pad_token_id
        graphdef, state = nnx.split(self)
        return _generate_jit(
            graphdef,
            state,
            jnp.asarray(input_ids, jnp.int32),
            jnp.asarray(attention_mask, jnp.int32),
            jnp.int32(-1 if eos is None else eos),
            jnp.int32(pad),
            max_new_tokens=int(max_new_tokens),
        )
