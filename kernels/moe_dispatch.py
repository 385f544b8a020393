"""Routing-aware gather and gated combine for sparse MoE, as Pallas kernels.

A dropless MoE layer with `n` tokens and top-`k` routing has `n * k` assignments. They are
numbered choice-major: assignment `a = i * n + t` is token `t`'s `i`-th choice, so the first
choices of all tokens come before any second choice. `order` ([n*k], a permutation of
assignments) lists them sorted by expert; slot `j` of the sorted buffer holds assignment
`order[j]`, i.e. token `order[j] % n`.

  * `dispatch(x, order, k)`: sorted[j] = x[order[j] % n]. The gather that puts tokens into
    expert-sorted order before the grouped matmul.
  * `combine(y, order, gates)`: out[t] = sum_i gates[t, i] * y[slot of assignment (i, t)].
    The scatter-add that brings expert outputs back to their tokens with their gates. Because
    `order` is a permutation, each output row has exactly k contributions at known slots, so
    the kernel is written as a gather-reduce over the inverse permutation: every output tile
    is owned by one program, there are no atomics and the sum order is fixed (deterministic).

Each is a `jax.custom_vjp` whose backward pass uses the other kernel (the gather's transpose is
the unit-gate combine; the combine's transpose is a gather scaled by the gates). Each has a
pure-jnp reference with the same signature (`dispatch_reference`, `combine_reference`).

Tiles: the grid runs over `block_rows` rows of the output; sizes that are not a multiple of
the tile are padded with row 0 and gate 0, and the padding is sliced off. On CPU only
`interpret=True` runs; `interpret=None` picks it from the default backend.

Shape vocabulary: n tokens, k choices per token, m = n * k assignments, d width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, Float, Int

__all__ = ["combine", "combine_reference", "dispatch", "dispatch_reference", "inverse_order"]


def _interpret(interpret: bool | None) -> bool:
    # Pallas has no compiled CPU backend; everything else compiles.
    return jax.default_backend() == "cpu" if interpret is None else bool(interpret)


def _check(order: jax.Array, m: int, what: str) -> None:
    if order.ndim != 1 or order.shape[0] != m:
        raise ValueError(f"{what}: order must have shape [{m}], got {order.shape}")
    if not jnp.issubdtype(order.dtype, jnp.integer):
        raise TypeError(f"{what}: order must hold integers, got {order.dtype}")


def inverse_order(order: Int[Array, " m"]) -> Int[Array, " m"]:
    """slot[a] = j where order[j] = a: where each assignment sits in the sorted buffer."""
    m = order.shape[0]
    return jnp.zeros((m,), jnp.int32).at[order].set(jnp.arange(m, dtype=jnp.int32))


def _pad_rows(a: jax.Array, rows: int) -> jax.Array:
    pad = rows - a.shape[0]
    if pad == 0:
        return a
    return jnp.concatenate([a, jnp.zeros((pad, *a.shape[1:]), a.dtype)], axis=0)


# ---------------------------------------------------------------------------
# References (pure jnp, same signatures)
# ---------------------------------------------------------------------------


def dispatch_reference(
    x: Float[Array, "n d"], order: Int[Array, " m"], k: int, **_
) -> Float[Array, "m d"]:
    """sorted[j] = x[order[j] % n]."""
    n = x.shape[0]
    return jnp.take(x, order % n, axis=0)


def combine_reference(
    y: Float[Array, "m d"], order: Int[Array, " m"], gates: Float[Array, "n k"], **_
) -> Float[Array, "n d"]:
    """out[t] = sum_i gates[t, i] * y[slot of assignment i * n + t]."""
    n, k = gates.shape
    slot = inverse_order(order)
    # [k n d]: the output row of every assignment, choice-major
    per_choice = jnp.take(y, slot, axis=0).reshape(k, n, -1).astype(jnp.float32)
    return jnp.einsum("knd,nk->nd", per_choice, gates.astype(jnp.float32)).astype(y.dtype)


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


def _gather_kernel(rows_ref, x_ref, o_ref):
    # rows_ref: [tm] source rows of this output tile; x_ref: the whole [n d] source.
    o_ref[...] = x_ref[rows_ref[...], :]


def _gather(x: jax.Array, rows: jax.Array, block_rows: int, interpret: bool) -> jax.Array:
    m, d = rows.shape[0], x.shape[1]
    tiles = pl.cdiv(m, block_rows)
    rows_p = _pad_rows(rows.astype(jnp.int32), tiles * block_rows)
    out = pl.pallas_call(
        _gather_kernel,
        grid=(tiles,),
        in_specs=[
            pl.BlockSpec((block_rows,), lambda i: (i,)),
            pl.BlockSpec(x.shape, lambda i: (0, 0)),
        ],
        out_specs=pl.BlockSpec((block_rows, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((tiles * block_rows, d), x.dtype),
        interpret=interpret,
    )(rows_p, x)
    return out[:m]


def _combine_kernel(slots_ref, gates_ref, y_ref, o_ref):
    # slots_ref, gates_ref: [tn k] for this tile of tokens; y_ref: the whole [m d] buffer.
    k = slots_ref.shape[1]
    acc = jnp.zeros(o_ref.shape, jnp.float32)
    # k is small and static: unrolled, one gather per choice, summed in a fixed order.
    for i in range(k):
        rows = y_ref[slots_ref[:, i], :].astype(jnp.float32)
        acc = acc + gates_ref[:, i][:, None].astype(jnp.float32) * rows
    o_ref[...] = acc.astype(o_ref.dtype)


def _combine(
    y: jax.Array, slots: jax.Array, gates: jax.Array, block_rows: int, interpret: bool
) -> jax.Array:
    n, k = slots.shape
    d = y.shape[1]
    tiles = pl.cdiv(n, block_rows)
    slots_p = _pad_rows(slots.astype(jnp.int32), tiles * block_rows)
    gates_p = _pad_rows(gates, tiles * block_rows)
    out = pl.pallas_call(
        _combine_kernel,
        grid=(tiles,),
        in_specs=[
            pl.BlockSpec((block_rows, k), lambda i: (i, 0)),
            pl.BlockSpec((block_rows, k), lambda i: (i, 0)),
            pl.BlockSpec(y.shape, lambda i: (0, 0)),
        ],
        out_specs=pl.BlockSpec((block_rows, d), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((tiles * block_rows, d), y.dtype),
        interpret=interpret,
    )(slots_p, gates_p, y)
    return out[:n]


def _slots(order: jax.Array, n: int, k: int) -> jax.Array:
    # [k n] -> [n k]: token t's i-th choice sits at sorted slot slots[t, i]
    return inverse_order(order).reshape(k, n).T


# ---------------------------------------------------------------------------
# Public ops with custom VJPs
# ---------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dispatch(x, order, k, block_rows, interpret):
    return _gather(x, order % x.shape[0], block_rows, interpret)


def _dispatch_fwd(x, order, k, block_rows, interpret):
    return _dispatch(x, order, k, block_rows, interpret), order


def _dispatch_bwd(k, block_rows, interpret, order, g):
    # The transpose of the gather: each token sums the k slots it was copied to.
    n = g.shape[0] // k
    ones = jnp.ones((n, k), g.dtype)
    dx = _combine(g, _slots(order, n, k), ones, block_rows, interpret)
    return dx, None


_dispatch.defvjp(_dispatch_fwd, _dispatch_bwd)


def dispatch(
    x: Array,
    order: Array,
    k: int,
    *,
    block_rows: int = 128,
    interpret: bool | None = None,
) -> Float[Array, "m d"]:
    """Copies token rows into expert-sorted order: sorted[j] = x[order[j] % n].

    The arguments' shapes and dtypes are checked here with messages that name them, so the
    signature does not repeat them as jaxtyping shapes (a runtime checker would pre-empt
    those messages).

    Args:
      x: [n d] token rows.
      order: [n*k] a permutation of the choice-major assignments, sorted by expert.
      k: choices per token.
      block_rows: output rows per program (the tile).
      interpret: run the kernel in interpret mode; None: only on CPU.
    """
    if x.ndim != 2:
        raise ValueError(f"dispatch: x must have shape [n, d], got {x.shape}")
    if k < 1:
        raise ValueError(f"dispatch: k must be >= 1, got {k=}")
    if block_rows < 1:
        raise ValueError(f"dispatch: block_rows must be >= 1, got {block_rows=}")
    _check(order, x.shape[0] * k, "dispatch")
    return _dispatch(x, order, int(k), int(block_rows), _interpret(interpret))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _combine_op(y, order, gates, block_rows, interpret):
    n, k = gates.shape
    return _combine(y, _slots(order, n, k), gates, block_rows, interpret)


def _combine_fwd(y, order, gates, block_rows, interpret):
    return _combine_op(y, order, gates, block_rows, interpret), (y, order, gates)


def _combine_bwd(block_rows, interpret, res, g):
    y, order, gates = res
    n, k = gates.shape
    # dy[j] = gate of slot j * g[token of slot j]: a gather, scaled.
    g_sorted = _gather(g, order % n, block_rows, interpret)
    gate_sorted = jnp.take(gates.T.reshape(-1), order)
    dy = (g_sorted.astype(jnp.float32) * gate_sorted[:, None].astype(jnp.float32)).astype(y.dtype)
    # dgates[t, i] = <y[slot(t, i)], g[t]>
    y_tok = _gather(y, _slots(order, n, k).T.reshape(-1), block_rows, interpret)
    # [(k n) d] -> [k n d]
    y_tok = y_tok.reshape(k, n, -1).astype(jnp.float32)
    dgates = jnp.einsum("knd,nd->nk", y_tok, g.astype(jnp.float32)).astype(gates.dtype)
    return dy, None, dgates


_combine_op.defvjp(_combine_fwd, _combine_bwd)


def combine(
    y: Array,
    order: Array,
    gates: Array,
    *,
    block_rows: int = 128,
    interpret: bool | None = None,
) -> Float[Array, "n d"]:
    """Adds expert outputs back to their tokens with their gates (accumulated in float32).

    As in `dispatch`, the arguments are checked here with messages that name them.

    Args:
      y: [n*k d] expert outputs in expert-sorted order (slot j holds assignment order[j]).
      order: [n*k] the permutation used by `dispatch`.
      gates: [n k] weight of each token's i-th choice (0 drops it).
      block_rows: output tokens per program (the tile).
      interpret: run the kernel in interpret mode; None: only on CPU.
    """
    if y.ndim != 2 or gates.ndim != 2:
        raise ValueError(f"combine: need y [m, d] and gates [n, k], got {y.shape} {gates.shape}")
    n, k = gates.shape
    if y.shape[0] != n * k:
        raise ValueError(f"combine: y must have n*k = {n * k} rows, got {y.shape[0]}")
    if block_rows < 1:
        raise ValueError(f"combine: block_rows must be >= 1, got {block_rows=}")
    _check(order, n * k, "combine")
    return _combine_op(y, order, gates, int(block_rows), _interpret(interpret))
