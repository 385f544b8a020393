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
