"""Speculative cascades: a Swift GPT-2 drafts for a Super GPT-2 (same vocabulary).

Each call the Swift drafts k tokens greedily (its own KV cache, one more pass to cache the
k-th draft), and the Super scores prev and the k drafts in one pass of k + 1 positions. A
draft stands if it is the Super's greedy token (exact mode: output identical to the Super's
greedy decoding) or, in lossy mode, if its deferral score reaches the threshold: the Super's
probability of the Swift's token ("super_prob", Narasimhan et al.'s token-level deferral
against the large model) or the Swift's own top probability ("swift_prob"). The first draft
that does not stand is replaced by the Super's token, as in speculative decoding.

The threshold comes from a calibration split (`cascade_token_scores` then
`calibrate_cascade`): teacher-forced on the Super's greedy continuations, a token is
"wrong" when the Swift's token is kept where the Super's would differ, and
`elang_jax.calibrate` picks the most permissive threshold meeting the target (e.g. a
Clopper-Pearson bound on the per-token disagreement rate). The guarantee is per token on
teacher-forced text; free-running decoding drifts once a token differs, which is why the
held-out evaluation reports agreement of whole continuations too.

Both models are left-padded GPT-2s with per-row cache slots, as in `_self_spec`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int

from elang_jax.calibration import CalibrationTarget, OperatingPoint, calibrate, threshold_candidates
from elang_jax.models._decode import multi_token_loop
from elang_jax.models._gpt2 import GPT2LMHeadModel
from elang_jax.speculative._accept import accept_drafts, check_draft_room
from elang_jax.speculative._output import SpeculativeOutput


class Deferral(enum.StrEnum):
    """The lossy cascade's per-token score (a draft stands when score >= threshold)."""

    SUPER_PROB = "super_prob"  # the Super's probability of the Swift's token
    SWIFT_PROB = "swift_prob"  # the Swift's probability of its own token


@dataclasses.dataclass(frozen=True, kw_only=True)
class CascadeConfig:
    """Swift-to-Super speculative cascade.

    Attributes:
      k: tokens the Swift drafts per Super call (>= 1).
      threshold: lossy deferral threshold; +inf is exact (the Super's greedy output).
      deferral: the score compared with the threshold (see Deferral).
    """

    k: int = 4
    threshold: float = math.inf
    deferral: Deferral | str = Deferral.SUPER_PROB

    def __post_init__(self):
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an int >= 1, got k={self.k!r}")
        if math.isnan(self.threshold):
            raise ValueError("threshold is NaN")
        try:
            object.__setattr__(self, "deferral", Deferral(self.deferral))
        except ValueError:
            valid = [d.value for d in Deferral]
            raise ValueError(f"deferral must be one of {valid}, got {self.deferral!r}") from None

    @property
    def exact(self) -> bool:
        return self.threshold == math.inf


def _run(
    model: GPT2LMHeadModel,
    tokens: Int[Array, "b t"],
    positions: Int[Array, "b t"],
    mask: Int[Array, "b c"],
    cache,
    slot: Int[Array, " b"],
) -> tuple[Float[Array, "b t v"], tuple]:
    """Logits of `tokens` written at per-row cache slots `slot`.."""
    tr = model.transformer
    out = tr.run_layers(tr.embed(tokens, positions), mask, cache=cache, cache_index=slot)
    assert out.cache is not None
    return model.logits(out.last_hidden_state), out.cache


def cascade_decode(
    super_model: GPT2LMHeadModel,
    swift_model: GPT2LMHeadModel,
    input_ids: Int[Array, "b t"],
    attention_mask: Int[Array, "b t"],
    max_new_tokens: int,
    *,
    config: CascadeConfig,
    eos_token_id: Int[Array, ""] | int | None,
    pad_token_id: Int[Array, ""] | int,
    threshold: Float[Array, ""] | float | None = None,
) -> SpeculativeOutput:
    """The cascade as a pure function (no checks, no `jit`); `threshold` (may be traced)
    overrides the config's so that a sweep compiles once."""
    b, t = input_ids.shape
    n, k = max_new_tokens, config.k
    tau = jnp.asarray(config.threshold if threshold is None else threshold, jnp.float32)
    mask = attention_mask.astype(jnp.int32)
    position_ids = jnp.where(mask == 1, jnp.cumsum(mask, axis=1) - 1, 0)
    length = t + n + k
    full_mask = jnp.concatenate([mask, jnp.ones((b, n + k), jnp.int32)], axis=1)
    caches = []
    for model in (super_model, swift_model):
        out = model(
            input_ids, full_mask, position_ids, cache=model.init_cache(b, length), cache_index=0
        )
        caches.append(out.cache)
        if model is super_model:
            first = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)
    last_pos = position_ids[:, -1]

    def step(produced, prev, state):
        super_cache, swift_cache = state
        slot = t + produced - 1
        pos = last_pos + produced
        token, drafts, confidence = prev, [], []
        for j in range(k + 1):
            logits, swift_cache = _run(
                swift_model, token[:, None], (pos + j)[:, None], full_mask, swift_cache, slot + j
            )
            if j < k:  # the last pass only caches the k-th draft's keys and values
                token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
                drafts.append(token)
                confidence.append(jnp.max(jax.nn.softmax(logits[:, 0], axis=-1), axis=-1))
        d = jnp.stack(drafts, axis=1)
        # [b (k + 1)] prev and the drafts, verified in one Super pass.
        seq = jnp.concatenate([prev[:, None], d], axis=1)
        steps = jnp.arange(k + 1, dtype=jnp.int32)
        logits, super_cache = _run(
            super_model, seq, pos[:, None] + steps[None, :], full_mask, super_cache, slot
        )
        verified = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if config.deferral is Deferral.SUPER_PROB:
            # [b k] the Super's probability of each draft, given the drafts before it.
            probs = jax.nn.softmax(logits[:, :k], axis=-1)
            score = jnp.take_along_axis(probs, d[:, :, None], axis=-1)[:, :, 0]
        else:
            score = jnp.stack(confidence, axis=1)
        tokens, counts, accepted = accept_drafts(d, verified, score >= tau)
        return tokens, counts, (super_cache, swift_cache), accepted

    loop = multi_token_loop(
        step,
        (caches[0], caches[1]),
        first_token=first,
        max_new_tokens=n,
        width=k + 1,
        eos=eos_token_id,
        pad=pad_token_id,
        extras=jnp.zeros((b,), jnp.int32),
    )
    return SpeculativeOutput.from_loop(loop, k)


@functools.partial(jax.jit, static_argnames=("super_def", "swift_def", "max_new_tokens", "config"))
def _cascade_jit(
    super_def,
    super_state,
    swift_def,
    swift_state,
    ids,
    mask,
    eos,
    pad,
    threshold,
    *,
    max_new_tokens,
    config,
):
    return cascade_decode(
        nnx.merge(super_def, super_state),
        nnx.merge(swift_def, swift_state),
        ids,
        mask,
        max_new_tokens,
        config=config,
        eos_token_id=eos,
        pad_token_id=pad,
        threshold=threshold,
    )


def check_cascade(
    super_model: GPT2LMHeadModel,
    swift_model: GPT2LMHeadModel,
    input_ids: ArrayLike,
    attention_mask: ArrayLike | None,
    max_new_tokens: int | np.integer,
    config: CascadeConfig,
) -> Int[ArrayLike, "b t"]:
    """Prompt checks for both models plus the cascade's own; returns the mask."""
    if not isinstance(config, CascadeConfig):
        raise TypeError(f"config must be a CascadeConfig, got {type(config).__name__}")
    if swift_model.config.vocab_size != super_model.config.vocab_size:
        raise ValueError(
            f"the Swift's vocabulary ({swift_model.config.vocab_size}) differs from the "
            f"Super's ({super_model.config.vocab_size}): drafts must be Super tokens"
        )
    for name, model in (("Super", super_model), ("Swift", swift_model)):
        attention_mask = check_draft_room(
            model.config, input_ids, attention_mask, max_new_tokens, config.k, name
        )
    assert attention_mask is not None
    return attention_mask


def speculative_cascade_gpt2(
    super_model: GPT2LMHeadModel,
    swift_model: GPT2LMHeadModel,
    input_ids: ArrayLike,  # [b t] left-padded
    attention_mask: ArrayLike | None = None,  # [b t]
    max_new_tokens: int | np.integer = 20,
    *,
    config: CascadeConfig,
    threshold: float | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> SpeculativeOutput:
    """The Swift drafts, the Super verifies: exact (threshold +inf) or lossy; compiled once
    per (shapes, max_new_tokens, config); `threshold` overrides the config's without
    recompiling. EOS and pad ids default to the Super's config."""
    mask = check_cascade(
        super_model, swift_model, input_ids, attention_mask, max_new_tokens, config
    )
    tau = config.threshold if threshold is None else float(threshold)
    if math.isnan(tau):
        raise ValueError("threshold is NaN")
    eos = super_model.config.eos_token_id if eos_token_id is None else eos_token_id
    pad = super_model.config.generation_pad_id if pad_token_id is None else pad_token_id
    super_def, super_state = nnx.split(super_model)
    swift_def, swift_state = nnx.split(swift_model)
    return _cascade_jit(
        super_def,
        super_state,
        swift_def,
        swift_state,
        jnp.asarray(input_ids, jnp.int32),
        jnp.asarray(mask, jnp.int32),
        jnp.int32(-1 if eos is None else eos),
        jnp.int32(pad),
        jnp.float32(tau),
        max_new_tokens=int(max_new_tokens),
        config=config,
    )


@dataclasses.dataclass(frozen=True)
class TokenScores:
    """Teacher-forced per-token facts for calibration, one entry per continuation token.

    Attributes:
      score: the deferral score of the Swift's greedy token.
      agrees: whether the Swift's greedy token is the Super's.
    """

    score: np.ndarray
    agrees: np.ndarray


def cascade_token_scores(
    super_model: GPT2LMHeadModel,
    swift_model: GPT2LMHeadModel,
    sequences: Int[ArrayLike, "b s"],
    prompt_len: int,
    deferral: Deferral | str = Deferral.SUPER_PROB,
) -> TokenScores:
    """Scores of every position after `prompt_len` of unpadded `sequences` (prompts plus
    the Super's greedy continuations), both models run once without a cache."""
    deferral = Deferral(deferral)
    seq = jnp.asarray(sequences, jnp.int32)
    big = super_model(seq).logits[:, prompt_len - 1 : -1]
    small = swift_model(seq).logits[:, prompt_len - 1 : -1]
    # [b s'] the Swift's greedy token at each continuation position.
    draft = jnp.argmax(small, axis=-1)
    agrees = draft == jnp.argmax(big, axis=-1)
    if deferral is Deferral.SUPER_PROB:
        probs = jax.nn.softmax(big, axis=-1)
        score = jnp.take_along_axis(probs, draft[..., None], axis=-1)[..., 0]
    else:
        score = jnp.max(jax.nn.softmax(small, axis=-1), axis=-1)
    return TokenScores(
        score=np.asarray(score, np.float64).reshape(-1),
        agrees=np.asarray(agrees).reshape(-1),
    )


def calibrate_cascade(
    scores: TokenScores, target: CalibrationTarget, num: int = 200
) -> OperatingPoint:
    """The deferral threshold for `target` on calibration tokens (see the module docstring).

    A candidate threshold keeps the Swift's token where score >= threshold; the token is
    right where the Swift agrees with the Super or the Super's token is used (the Super is
    the reference, right everywhere). Cost: the share of tokens where the Super's token
    replaces the Swift's (each such token ends a verification call). Candidates run from
    +inf (exact) down, the order the guarantee's fixed-sequence testing needs.
    """
    thresholds = threshold_candidates(scores.score, num=num)
    # [m n] candidate m keeps token n's draft; wrong where kept and disagreeing.
    keeps = scores.score[None, :] >= thresholds[:, None]
    correct = scores.agrees[None, :] | ~keeps
    cost = 1.0 - (keeps | scores.agrees[None, :]).mean(axis=1)
    reference = np.ones(scores.agrees.shape, bool)
    return calibrate(correct, cost, reference, target, settings=[float(x) for x in thresholds])
