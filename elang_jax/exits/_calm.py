"""CALM-style per-token early exit in KV-cached decoders (GPT-2, the T5 decoder).

Each generated token runs the decoder layer by layer; after layer i (i < L) a row leaves
when its confidence (computed through the shared final norm and LM head) reaches the
threshold for the token's position,
    lambda_t = 0.9 * lambda + 0.1 * lambda * exp(-tau * t / N)   (CALM's code, tau = 4),
N the number of new tokens. A row that left keeps its hidden state; the layers it skips
still receive keys and values computed from that state ("propagation"), so later tokens can
attend to them. Every row decides for itself, so a token never depends on its batch
neighbours; once every row of the batch has left, the remaining layers compute only those
keys and values (`lax.cond`), which is where the time goes.

The prompt (GPT-2 prefill) and the T5 encoder always run every layer.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int

from elang_jax.models._common import check_mask, check_token_ids, update_cache
from elang_jax.models._decode import greedy_loop
from elang_jax.models._gpt2 import GPT2LMHeadModel, causal_bias, check_prompt
from elang_jax.models._t5 import T5ForConditionalGeneration
from elang_jax.models._t5_layers import _masked_bias
from elang_jax.routing import score


class Confidence(enum.StrEnum):
    """CALM's confidence measures."""

    SOFTMAX_MAX = "softmax_max"  # largest next-token probability
    SOFTMAX_DIFF = "softmax_diff"  # top-1 minus top-2 probability
    STATE = "state"  # cosine similarity of the hidden state before and after the layer


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalmConfig:
    """Per-token decoder exits.

    Attributes:
      threshold: lambda; +inf never exits early (the full model), -inf leaves after
        `min_layers` layers.
      confidence: the measure (see Confidence).
      decay: tau of the position decay; 0 keeps lambda constant.
      min_layers: no row leaves before this many layers (>= 1).
    """

    threshold: float = math.inf
    confidence: Confidence | str = Confidence.SOFTMAX_MAX
    decay: float = 4.0
    min_layers: int = 1

    def __post_init__(self):
        try:
            object.__setattr__(self, "confidence", Confidence(self.confidence))
        except ValueError:
            valid = [c.value for c in Confidence]
            raise ValueError(
                f"confidence must be one of {valid}, got {self.confidence!r}"
            ) from None
        if math.isnan(self.threshold):
            raise ValueError("threshold is NaN")
        if math.isnan(self.decay) or self.decay < 0:
            raise ValueError(f"decay must be >= 0, got {self.decay}")
        if self.min_layers < 1:
            raise ValueError(f"min_layers must be >= 1, got {self.min_layers}")


@dataclasses.dataclass(frozen=True)
class CalmOutput:
    """tokens [b n] int32; layers [b n] int32 layers run per token (0 after EOS)."""

    tokens: Int[Array, "b n"]
    layers: Int[Array, "b n"]


jax.tree_util.register_dataclass(CalmOutput, data_fields=["tokens", "layers"], meta_fields=[])


def position_threshold(threshold, t, n: int, decay: float):
    """CALM's decaying threshold for output position t of n."""
    return 0.9 * threshold + 0.1 * threshold * jnp.exp(-decay * t / n)


def _confidence(kind: Confidence, logits, before, after):
    if kind is Confidence.STATE:
        # [b d] cosine similarity, per row.
        num = jnp.sum(before * after, -1)
        den = jnp.linalg.norm(before, axis=-1) * jnp.linalg.norm(after, axis=-1)
        return (num / jnp.maximum(den, 1e-12)).astype(jnp.float32)
    return score("max_prob" if kind is Confidence.SOFTMAX_MAX else "margin", logits)


def _exit_token(
    num_layers: int,
    h: Float[Array, "b 1 d"],
    caches: list,
    full_layer: Callable,
    kv_only: Callable,
    head: Callable,
    lam: Array,
    config: CalmConfig,
):
    """One token through the stack with per-row exits: (logits [b v], caches, layers [b])."""
    b = h.shape[0]
    exited = jnp.zeros((b,), bool)
    layers = jnp.full((b,), num_layers, jnp.int32)
    needs_logits = config.confidence is not Confidence.STATE
    for i in range(num_layers):
        h_new, caches[i] = jax.lax.cond(
            jnp.all(exited),
            lambda h, c, i=i: (h, kv_only(i, h, c)),
            lambda h, c, i=i: full_layer(i, h, c),
            h,
            caches[i],
        )
        before, h = h, jnp.where(exited[:, None, None], h, h_new)
        if i < num_layers - 1 and i + 1 >= config.min_layers:
            logits = head(h)[:, 0] if needs_logits else None
            conf = _confidence(Confidence(config.confidence), logits, before[:, 0], h[:, 0])
            leave = ~exited & (conf >= lam)
            layers = jnp.where(leave, i + 1, layers)
            exited = exited | leave
    return head(h)[:, 0], caches, layers


def _run_checked(jitted, model, input_ids, attention_mask, max_new_tokens, config, threshold):
    """Checks the arguments shared by both decoders, then calls their jitted loop."""
    config = config or CalmConfig()
    check_token_ids(input_ids, model.config.vocab_size)
    if attention_mask is None:
        attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    check_mask(attention_mask, input_ids.shape)
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int | np.integer)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    max_new_tokens = int(max_new_tokens)
    lam = config.threshold if threshold is None else float(threshold)
    if math.isnan(lam):
        raise ValueError("threshold is NaN")
    graphdef, state = nnx.split(model)
    return jitted(
        graphdef,
        state,
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(attention_mask, jnp.int32),
        jnp.float32(lam),
        max_new_tokens=max_new_tokens,
        config=config,
    )


# ---------------------------------------------------------------------------- GPT-2


def calm_generate_gpt2(
    model: GPT2LMHeadModel,
    input_ids: ArrayLike,  # [b t]; checked with messages that name it
    attention_mask: ArrayLike | None = None,  # [b t]
    max_new_tokens: int | np.integer = 20,
    config: CalmConfig | None = None,
    *,
    threshold: float | None = None,
) -> CalmOutput:
    """Greedy KV-cached GPT-2 decoding with CALM exits (left-padded prompts, jitted).

    With threshold +inf the tokens are those of `model.generate`. `threshold` overrides the
    config's without recompiling.
    """
    # The prompt checks of `model.generate`: left padding, no empty rows.
    attention_mask = check_prompt(model.config, input_ids, attention_mask, max_new_tokens)
    return _run_checked(
        _gpt2_jit, model, input_ids, attention_mask, max_new_tokens, config, threshold
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "config"))
def _gpt2_jit(graphdef, state, input_ids, mask, lam, *, max_new_tokens, config):
    model = nnx.merge(graphdef, state)
    tr = model.transformer
    num_layers = len(tr.layers)
    b, t = input_ids.shape
    n = max_new_tokens
    position_ids = jnp.where(mask == 1, jnp.cumsum(mask, axis=1) - 1, 0)
    # [b (t + n)]
    full_mask = jnp.concatenate([mask, jnp.ones((b, n), jnp.int32)], axis=1)
    prefill = model(
        input_ids, full_mask, position_ids, cache=model.init_cache(b, t + n), cache_index=0
    )
    first = jnp.argmax(prefill.logits[:, -1], axis=-1).astype(jnp.int32)
    # [b (t + n)]
    key_pos = jnp.broadcast_to(jnp.arange(t + n, dtype=jnp.int32), (b, t + n))

    def step(i, prev, carry):
        cache, pos = carry
        idx = t + i - 1
        bias = causal_bias(jnp.full((b, 1), idx, jnp.int32), key_pos, full_mask)
        h = tr.embed(prev[:, None], (pos + 1)[:, None])

        def full_layer(j, h, c):
            h, _, c = tr.layers[j](h, bias, cache=c, cache_index=idx)
            return h, c

        def kv_only(j, h, c):
            k, v = tr.layers[j].attention.project_kv(tr.layers[j].ln_1(h))
            return update_cache(c, k, v, idx)

        lam_t = position_threshold(lam, i.astype(jnp.float32), n, config.decay)
        logits, new_cache, used = _exit_token(
            num_layers, h, list(cache), full_layer, kv_only, model.logits, lam_t, config
        )
        return logits, (tuple(new_cache), pos + 1), used

    out = greedy_loop(
        step,
        (prefill.cache, position_ids[:, -1]),
        first_token=first,
        max_new_tokens=n,
        eos=model.config.eos_token_id,
        pad=model.config.generation_pad_id,
        # The prefill ran the whole stack for the first token.
        extras=jnp.full((b,), num_layers, jnp.int32),
    )
    return CalmOutput(tokens=out.tokens, layers=out.extras)


# ---------------------------------------------------------------------------- T5


def calm_generate_t5(
    model: T5ForConditionalGeneration,
    input_ids: ArrayLike,  # [b s]; checked with messages that name it
    attention_mask: ArrayLike | None = None,  # [b s]
    max_new_tokens: int | np.integer = 20,
    config: CalmConfig | None = None,
    *,
    threshold: float | None = None,
) -> CalmOutput:
    """Greedy KV-cached T5 decoding with CALM exits in the decoder (jitted).

    With threshold +inf the tokens are those of `model.generate`.
    """
    return _run_checked(
        _t5_jit, model, input_ids, attention_mask, max_new_tokens, config, threshold
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "config"))
def _t5_jit(graphdef, state, input_ids, mask, lam, *, max_new_tokens, config):
    model = nnx.merge(graphdef, state)
    c = model.config
    dec = model.decoder
    num_layers = len(dec.layers)
    n = max_new_tokens
    b = input_ids.shape[0]
    enc = model.encode(input_ids, mask).last_hidden_state
    cache = model.init_cache(b, n, enc)
    cross = cache.cross_attention
    # [b 1 1 s]
    cross_bias = jnp.where(mask[:, None, None, :].astype(bool), 0.0, jnp.finfo(jnp.float32).min)
    # [1 n]
    key_pos = jnp.arange(n, dtype=jnp.int32)[None]

    def head(h):
        return model.lm_logits(dec.final_norm(h))

    def step(i, token, self_cache):
        # [1 1]
        query_pos = jnp.full((1, 1), i, jnp.int32)
        # [1 1 1 n]
        causal = (key_pos[:, None, :] <= query_pos[:, :, None])[:, None]
        bias = _masked_bias(dec.relative_bias(query_pos, key_pos), causal)
        h = model.embed(token[:, None])

        def full_layer(j, h, kv):
            h, _, kv = dec.layers[j](
                h, bias, cache=kv, cache_index=i, cross_kv=cross[j], cross_bias=cross_bias
            )
            return h, kv

        def kv_only(j, h, kv):
            layer = dec.layers[j]
            k, v = layer.attention.project_kv(layer.attention_norm(h))
            return update_cache(kv, k, v, i)

        lam_t = position_threshold(lam, i.astype(jnp.float32), n, config.decay)
        logits, new_self, used = _exit_token(
            num_layers, h, list(self_cache), full_layer, kv_only, head, lam_t, config
        )
        return logits, tuple(new_self), used

    out = greedy_loop(
        step,
        cache.self_attention,
        start_token=jnp.full((b,), c.decoder_start_token_id, jnp.int32),
        max_new_tokens=n,
        eos=c.eos_token_id,
        pad=c.pad_token_id,
        # Only the dtype and shape matter: the start token is not an output.
        extras=jnp.zeros((b,), jnp.int32),
    )
    return CalmOutput(tokens=out.tokens, layers=out.extras)


def mean_layers_per_token(out: CalmOutput) -> float:
    """Mean layers over the generated tokens (tokens after EOS excluded)."""
    layers = jnp.asarray(out.layers)
    real = layers > 0
    return float(jnp.sum(layers) / jnp.maximum(jnp.sum(real), 1))
