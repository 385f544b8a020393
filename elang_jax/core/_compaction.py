"""The compaction core: run the costly part of a step on a data-dependent subset of rows.

Score the batch, choose a data-dependent subset (a boolean `route` per example), pack the
chosen examples into the smallest static bucket that holds them, run the costly function on
that bucket only, and scatter its results back. `lax.switch` picks the bucket, so each
bucket size compiles once and the empty bucket runs nothing.

Who uses it: the cascade tier loop (`elang_jax.engine.cascade_loop`: a tier runs on the
rows the previous one escalated), the multi-exit loop (a segment runs on the rows still
running) and the seq2seq cascade (each decoder on its own rows). Two methods keep static
shapes differently and do not use it: ACC token pruning keeps a static count of tokens
inside every example (`elang_jax.pruning.gather_tokens`), and the MoE FFN sizes each
expert's buffer from the routing (`elang_jax.moe`).

Worked example, batch 8, buckets (0, 2, 4, 8), route = [0 1 0 0 1 1 0 0]:
  count = 3 -> bucket 4; order = [1 4 5 | 0 2 3 6 7] (stable: routed first, in batch order);
  the bucket holds rows [1 4 5 0]; row 0 only pads the bucket (valid = [1 1 1 0]): it is run
  but its result is thrown away, so no example's output depends on its neighbours.

Batch invariance: `fn` must treat rows independently (a model forward does). Then an
example's output depends only on its own input, never on which examples share its batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

PyTree = Any


def bucket_sizes(batch: int, fractions: Sequence[float] = (0.0, 0.125, 0.25, 0.5, 1.0)):
    """Static bucket sizes for a batch: ceil(f * batch) for each fraction, 0 and batch added.

    Returns a sorted tuple of distinct Python ints, always starting with 0 and ending with
    `batch`, so that every count in [0, batch] has a bucket.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    for f in fractions:
        if not 0.0 <= f <= 1.0 or f != f:
            raise ValueError(f"bucket fractions must lie in [0, 1], got {f}")
    # Less a hair so that a fraction made from a size (7 / 25) gives that size back, not
    # one more: 7 / 25 * 25 is 7.000000000000001 in floating point.
    sizes = {0, batch, *(int(np.ceil(f * batch - 1e-9)) for f in fractions)}
    return tuple(sorted(sizes))


def validate_buckets(buckets: Sequence[int], batch: int) -> tuple[int, ...]:
    buckets = tuple(int(b) for b in buckets)
    if list(buckets) != sorted(set(buckets)):
        raise ValueError(f"buckets must be strictly increasing, got {buckets}")
    if not buckets or buckets[-1] != batch:
        raise ValueError(f"the largest bucket must equal the batch size {batch}, got {buckets}")
    if buckets[0] < 0:
        raise ValueError(f"bucket sizes must be >= 0, got {buckets}")
    return buckets


@dataclasses.dataclass(frozen=True)
class Packing:
    """Where the routed examples went.

    Attributes:
      order: [b] stable permutation, routed examples first (in batch order).
      count: [] number of routed examples.
      bucket: [] index into the bucket sizes of the bucket used.
    """

    order: Int[Array, " b"]
    count: Int[Array, ""]
    bucket: Int[Array, ""]


jax.tree_util.register_dataclass(Packing, data_fields=["order", "count", "bucket"], meta_fields=[])


def plan(route: Bool[Array, " b"], buckets: Sequence[int]) -> Packing:
    """Stable order of the routed examples and the smallest bucket that holds them."""
    if route.ndim != 1:
        raise ValueError(f"route must have shape [batch], got {route.shape}")
    buckets = validate_buckets(buckets, route.shape[0])
    route = route.astype(bool)
    order = jnp.argsort(~route, stable=True).astype(jnp.int32)
    count = route.sum(dtype=jnp.int32)
    bucket = jnp.searchsorted(jnp.asarray(buckets, jnp.int32), count, side="left")
    return Packing(order=order, count=count, bucket=bucket.astype(jnp.int32))


def gather_rows(tree: PyTree, rows: Int[Array, " n"]) -> PyTree:
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), tree)


def scatter_rows(base: PyTree, rows: Int[Array, " n"], values: PyTree, valid) -> PyTree:
    """base[rows[i]] = values[i] where valid[i]; rows are distinct."""

    def one(b, v):
        keep = valid.reshape((-1,) + (1,) * (v.ndim - 1))
        current = jnp.take(b, rows, axis=0)
        return b.at[rows].set(jnp.where(keep, v.astype(b.dtype), current), unique_indices=True)

    return jax.tree.map(one, base, values)


def compact_apply(
    fn: Callable[[PyTree, Bool[Array, " n"]], PyTree],
    route: Bool[Array, " b"],
    inputs: PyTree,
    default: PyTree,
    buckets: Sequence[int],
) -> tuple[PyTree, Packing]:
    """Runs `fn` only on the routed examples, packed into the smallest bucket that fits.

    Args:
      fn: (inputs with leading dim n, valid [n]) -> outputs with leading dim n, for each
        bucket size n > 0. Rows with valid=False only pad the bucket; their outputs are
        discarded. `fn` must treat rows independently.
      route: [b] which examples to run.
      inputs: pytree of per-example arrays, leading dim b.
      default: pytree of per-example outputs, leading dim b, kept for unrouted examples;
        its structure, shapes and dtypes are those of `fn`'s outputs (leading dim b).
      buckets: static bucket sizes, strictly increasing, ending with b (see
        `bucket_sizes`). A 0 bucket makes an all-unrouted batch skip `fn` entirely.

    Returns:
      (outputs with leading dim b, the Packing used).
    """
    packing = plan(route, buckets)
    buckets = tuple(int(n) for n in buckets)

    def branch(n: int):
        def run(operands):
            inputs, default, packing = operands
            if n == 0:
                return default
            rows = packing.order[:n]
            valid = jnp.arange(n) < packing.count
            values = fn(gather_rows(inputs, rows), valid)
            return scatter_rows(default, rows, values, valid)

        return run

    out = jax.lax.switch(packing.bucket, [branch(n) for n in buckets], (inputs, default, packing))
    return out, packing
