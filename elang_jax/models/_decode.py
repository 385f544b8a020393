"""The greedy decode loop shared by every KV-cached decoder of the library.

A decoder (GPT-2, the T5 decoder, pruned or early-exit variants) supplies a step function
that turns the previous token into the next token's logits; `greedy_loop` owns the rest, so
that the EOS, padding and early-stop rules are written once and every decoder agrees on them:
  * the output buffer [b m], filled with pad, column i written at step i;
  * after a row emits EOS it emits pad, and it adds nothing to the per-step extras;
  * rows that are done on entry (padding rows of a compaction bucket) decode nothing and do
    not keep the loop running;
  * the loop stops once every row is done (`lax.while_loop`), not after m steps, which is
    where batched decoding of short answers saves its time.

Shape names: b batch, m new tokens (the buffer's columns), v vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from elang_jax.models._common import KVCache

State = TypeVar("State")

# (i, prev_token [b], state) -> (logits [b v] or next token [b], new state, extras).
# `i` is the output column being produced; extras is a pytree of [b ...] arrays (or None).
StepFn = Callable[
    [Int[Array, ""], Int[Array, " b"], State],
    tuple[Float[Array, "b v"] | Int[Array, " b"], State, Any],
]


@flax.struct.dataclass
class GreedyLoopOutput:
    """What `greedy_loop` produced.

    Attributes:
      tokens: [b m] int32 generated tokens; pad after a row's EOS and in rows done on entry.
      extras: the step's extras stacked per column, each leaf [b m ...]; zero where a row
        decoded nothing (after its EOS, done on entry, or past the step where the loop
        stopped). None when the step has no extras.
    """

    tokens: Int[Array, "b m"]
    extras: Any = None


def _next_token(out: Array) -> Int[Array, " b"]:
    if out.ndim == 2:
        return jnp.argmax(out, axis=-1).astype(jnp.int32)
    if out.ndim == 1 and jnp.issubdtype(out.dtype, jnp.integer):
        return out.astype(jnp.int32)
    raise ValueError(
        f"a step must return logits [b v] or integer tokens [b], got {out.dtype} {out.shape}"
    )


def _unless_done(done: Bool[Array, " b"], x: Array) -> Array:
    """x with the rows of finished sequences zeroed (whatever x's trailing dimensions)."""
    # [b 1 ...] so that one flag covers a row's every trailing entry.
    row = done.reshape(done.shape + (1,) * (x.ndim - 1))
    return jnp.where(row, jnp.zeros((), x.dtype), x)


def greedy_loop(
    step_fn: StepFn[State],
    state: State,
    *,
    max_new_tokens: int,
    eos: Int[Array, ""] | int | None,
    pad: Int[Array, ""] | int,
    start_token: Int[Array, " b"] | None = None,
    first_token: Int[Array, " b"] | None = None,
    done: Bool[Array, " b"] | None = None,
    extras: Any = None,
) -> GreedyLoopOutput:
    """Greedy decoding of up to `max_new_tokens` tokens per row with a caller's step.

    Exactly one of `start_token` and `first_token` says where decoding starts:
      * `start_token` [b] (encoder-decoders): fed to the step at column 0 but not output;
        the loop produces columns 0..m-1;
      * `first_token` [b] (decoder-only, after a prefill that already chose token 0): written
        to column 0 and fed to the step at column 1; the loop produces columns 1..m-1.

    Args:
      step_fn: (i, prev_token [b], state) -> (logits [b v] or token [b], state, extras).
        Called inside `lax.while_loop`: it must be traceable and keep the state's structure,
        shapes and dtypes. Its output for rows already done is ignored.
      state: the step's carry (KV caches, positions), passed through unchanged in structure.
      max_new_tokens: m, the output's columns (static, >= 1).
      eos: stops a row once emitted; None or -1 never stops (may be traced).
      pad: emitted after EOS and by rows done on entry (may be traced).
      done: [b] rows that decode nothing: they emit pad and do not keep the loop running.
      extras: one step's extras, a pytree of [b ...] arrays (None: the step returns None).
        Their shapes and dtypes size the [b m ...] output buffers; with `first_token` their
        values are column 0's, with `start_token` the values are unused.

    Returns:
      `GreedyLoopOutput` with the [b m] tokens and the [b m ...] extras.
    """
    if not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if (start_token is None) == (first_token is None):
        raise ValueError("pass exactly one of start_token and first_token")
    m = int(max_new_tokens)
    eos = jnp.asarray(-1 if eos is None else eos, jnp.int32)
    pad = jnp.asarray(pad, jnp.int32)
    prev = jnp.asarray(start_token if first_token is None else first_token, jnp.int32)
    b = prev.shape[0]
    done = jnp.zeros((b,), bool) if done is None else jnp.asarray(done).astype(bool)
    tokens = jnp.full((b, m), pad, jnp.int32)
    # One [b m ...] buffer per leaf; zero is what a row that decoded nothing reports.
    buffers = jax.tree.map(lambda x: jnp.zeros((b, m, *x.shape[1:]), x.dtype), extras)
    column = 0
    if first_token is not None:
        prev = jnp.where(done, pad, prev)
        tokens = tokens.at[:, 0].set(prev)
        # `done` is an array by now; a fresh name keeps that type inside the lambda.
        done_before = done
        buffers = jax.tree.map(
            lambda buf, x: buf.at[:, 0].set(_unless_done(done_before, x)), buffers, extras
        )
        done = done | (prev == eos)
        column = 1
    want = jax.tree.structure(extras)

    def cond(carry):
        i, _, _, done, _, _ = carry
        return (i < m) & ~jnp.all(done)

    def body(carry):
        i, prev, state, done, tokens, buffers = carry
        out, state, new = step_fn(i, prev, state)
        if jax.tree.structure(new) != want:
            raise ValueError(
                f"the step's extras {jax.tree.structure(new)} do not match `extras` {want}"
            )
        nxt = jnp.where(done, pad, _next_token(out))
        # [b 1] into column i
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i, axis=1)
        buffers = jax.tree.map(
            lambda buf, x: jax.lax.dynamic_update_slice_in_dim(
                buf, _unless_done(done, x).astype(buf.dtype)[:, None], i, axis=1
            ),
            buffers,
            new,
        )
        return i + 1, nxt, state, done | (nxt == eos), tokens, buffers

    carry = (jnp.int32(column), prev, state, done, tokens, buffers)
    out = jax.lax.while_loop(cond, body, carry)
    return GreedyLoopOutput(tokens=out[4], extras=out[5])


# ----------------------------------------------------------------------------------------------
# Several tokens per step (speculative decoding)


def update_cache_rows(
    cache: KVCache,
    k: Float[Array, "b t h k"],
    v: Float[Array, "b t h k"],
    index: Int[Array, " b"],
) -> KVCache:
    """Writes each row's [t h k] keys and values at its own slot `index[row]` (rows that
    have accepted different numbers of tokens write at different places)."""

    def write(buf, x, i):
        return jax.lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), i, axis=0)

    rows = jax.vmap(write)
    return KVCache(key=rows(cache.key, k, index), value=rows(cache.value, v, index))


# (produced [b], prev_token [b], state) -> (tokens [b w], counts [b], new state, extras).
# `produced` counts the columns a row has filled (the first token included): the step reads
# its cache slots and positions from it. The step proposes w tokens of which each row keeps
# its first counts[row] (1 <= counts <= w).
MultiStepFn = Callable[
    [Int[Array, " b"], Int[Array, " b"], State],
    tuple[Int[Array, "b w"], Int[Array, " b"], State, Any],
]


@flax.struct.dataclass
class MultiTokenLoopOutput:
    """What `multi_token_loop` produced.

    Attributes:
      tokens: [b m] int32 generated tokens, pad after a row's EOS, as `greedy_loop`.
      lengths: [b] columns a row filled (its EOS included), m for rows that never stopped,
        0 for rows done on entry.
      calls: [b] step calls made while the row was still running.
      totals: the step's extras summed over the calls each row was running ([b ...] leaves).
      iterations: the loop's step calls (the batch's slowest row).
    """

    tokens: Int[Array, "b m"]
    lengths: Int[Array, " b"]
    calls: Int[Array, " b"]
    totals: Any
    iterations: Int[Array, ""]


def multi_token_loop(
    step_fn: MultiStepFn[State],
    state: State,
    *,
    first_token: Int[Array, " b"],
    max_new_tokens: int,
    width: int,
    eos: Int[Array, ""] | int | None,
    pad: Int[Array, ""] | int,
    done: Bool[Array, " b"] | None = None,
    extras: Any = None,
) -> MultiTokenLoopOutput:
    """`greedy_loop`'s rules (pad after EOS, rows done on entry, stop once every row is
    done) for steps that emit up to `width` tokens per row, as many as each row accepted.

    Column 0 is `first_token` (chosen by a prefill). Each step proposes [b w] tokens and a
    count per row; the loop keeps a row's first `count` tokens, cut after an EOS and at
    `max_new_tokens` columns, so rows advance by different amounts and the output is the
    same as if the tokens had come one at a time.

    Args:
      step_fn: (produced [b], prev [b], state) -> (tokens [b w], counts [b], state, extras);
        traceable, state keeps its structure. Its output for rows already done is ignored.
      width: w, the most tokens a step emits (static, >= 1).
      extras: one call's extras (pytree of [b ...] arrays) sizing the `totals` buffers;
        None when the step returns None.

    Returns:
      `MultiTokenLoopOutput`.
    """
    if not isinstance(max_new_tokens, int | np.integer) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(width, int | np.integer) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    m, w = int(max_new_tokens), int(width)
    eos = jnp.asarray(-1 if eos is None else eos, jnp.int32)
    pad = jnp.asarray(pad, jnp.int32)
    prev = jnp.asarray(first_token, jnp.int32)
    b = prev.shape[0]
    done = jnp.zeros((b,), bool) if done is None else jnp.asarray(done).astype(bool)
    prev = jnp.where(done, pad, prev)
    # w spare columns so a step's writes past column m - 1 need no clipping; cut at the end.
    tokens = jnp.full((b, m + w), pad, jnp.int32).at[:, 0].set(prev)
    # Rows done on entry fill no column.
    produced = jnp.where(done, 0, 1).astype(jnp.int32)
    done = done | (prev == eos) | (m <= 1)
    totals = jax.tree.map(jnp.zeros_like, extras)
    calls = jnp.zeros((b,), jnp.int32)
    want = jax.tree.structure(extras)
    rows = jnp.arange(b)[:, None]
    cols = jnp.arange(w, dtype=jnp.int32)

    def cond(carry):
        it, _, _, _, done, *_ = carry
        return (it < m) & ~jnp.all(done)

    def body(carry):
        it, produced, prev, state, done, tokens, calls, totals = carry
        new, counts, state, more = step_fn(produced, prev, state)
        if jax.tree.structure(more) != want:
            raise ValueError(
                f"the step's extras {jax.tree.structure(more)} do not match `extras` {want}"
            )
        # [b w] the tokens a row keeps: within its count, up to and including its first EOS,
        # within the m columns; none for rows already done.
        keep = cols[None, :] < counts[:, None]
        is_eos = keep & (new == eos)
        after_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) > 0
        keep = keep & ~after_eos & (cols[None, :] < (m - produced)[:, None]) & ~done[:, None]
        kept = jnp.sum(keep, axis=1, dtype=jnp.int32)
        # Columns past the buffer's end are dropped; kept tokens never reach them.
        where = jnp.where(keep, produced[:, None] + cols[None, :], m + w)
        tokens = tokens.at[rows, where].set(new, mode="drop")
        last = jnp.take_along_axis(new, jnp.maximum(kept - 1, 0)[:, None], axis=1)[:, 0]
        prev = jnp.where(kept > 0, last, prev)
        running = ~done
        calls = calls + running.astype(jnp.int32)
        totals = jax.tree.map(lambda t, x: t + _unless_done(done, x).astype(t.dtype), totals, more)
        produced = produced + kept
        done = done | jnp.any(keep & (new == eos), axis=1) | (produced >= m)
        return it + 1, produced, prev, state, done, tokens, calls, totals

    carry = (jnp.int32(0), produced, prev, state, done, tokens, calls, totals)
    it, produced, _, _, _, tokens, calls, totals = jax.lax.while_loop(cond, body, carry)
    return MultiTokenLoopOutput(
        tokens=tokens[:, :m], lengths=produced, calls=calls, totals=totals, iterations=it
    )
