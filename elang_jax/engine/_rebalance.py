"""Escalated rows rebalanced across data shards before the next tier runs.

Data-parallel routing packs each shard's escalated rows into that shard's own bucket, so
the step takes as long as the shard with the most hard inputs. `balanced_apply` first deals
the escalated rows of all shards out evenly, by global rank, with one `lax.all_to_all`
(static shapes: every shard sends each other shard a fixed `capacity` of rows), runs the
tier on each shard's share through the compaction core, and sends the results back with
a second all-to-all. Nothing is dropped, and each row's result is the one it would get on
its own shard: the tier treats rows independently (the compaction core's contract).

Worked example, 4 shards of 4 rows, escalated counts (4, 0, 1, 0): global ranks 0-3 are
shard 0's rows, rank 4 is shard 2's. Rank g goes to shard g % 4, slot g // 4 of what its
source sends there, so shard 0 keeps one row and sends one to each of shards 1-3, and shard
2's row lands on shard 0: every shard now holds at most ceil(5 / 4) = 2 rows, instead of 4
on shard 0. A source sends at most ceil(rows / shards) rows to any one shard: that is the
capacity, so the exchange never overflows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool

from elang_jax.core import Packing, compact_apply, scatter_rows
from elang_jax.engine._data_parallel import DATA_AXIS, active_layout, without_layout

PyTree = Any


def exchange_capacity(rows: int, shards: int) -> int:
    """Rows each shard can send each other shard: ceil(rows / shards), never exceeded."""
    return -(-rows // shards)


def balanced_apply(
    fn: Callable[[PyTree, Bool[Array, " n"]], PyTree],
    route: Bool[Array, " b"],
    inputs: PyTree,
    default: PyTree,
    buckets: Sequence[int],
    shards: int,
    axis_name: str | tuple[str, ...] = DATA_AXIS,
) -> tuple[PyTree, Packing]:
    """`compact_apply` with the routed rows of all data shards dealt out evenly first.

    Traced inside `jax.shard_map` over `axis_name` (one axis or a tuple of them, `shards`
    devices in all; every shard must call it: it holds collectives). Arguments as
    `compact_apply`'s, per shard; `buckets` are for this shard's rows.

    Returns:
      (outputs with leading dim b, the Packing of the rows this shard ran: its `count` is
      its share, not its own routed rows).
    """
    b = route.shape[0]
    cap = exchange_capacity(b, shards)
    size = shards * cap
    # The receive buffer is `size` >= b rows: the buckets need it as their largest size.
    recv_buckets = tuple(int(n) for n in buckets)
    if recv_buckets[-1] != size:
        recv_buckets = (*recv_buckets, size)
    route = route.astype(bool)
    order = jnp.argsort(~route, stable=True).astype(jnp.int32)
    count = route.sum(dtype=jnp.int32)
    # [shards] each shard's routed count: the only all-gather, a few integers.
    counts = jax.lax.all_gather(count, axis_name)
    me = jax.lax.axis_index(axis_name)
    offset = jnp.sum(jnp.where(jnp.arange(shards) < me, counts, 0))
    rank = jnp.arange(b, dtype=jnp.int32)
    # [b] where local rank r goes in the send buffer [shards * cap]: shard (offset + r) %
    # shards, slot r // shards; distinct for distinct r (see the module docstring).
    slot = ((offset + rank) % shards) * cap + rank // shards
    sent = rank < count

    def to_buffer(x):
        buffer = jnp.zeros((size, *x.shape[1:]), x.dtype)
        return buffer.at[slot].set(jnp.take(x, order, axis=0), unique_indices=True)

    def exchange(x):
        # [size ...] -> [shards cap ...]: block j goes to shard j; block i comes from shard i.
        blocks = x.reshape(shards, cap, *x.shape[1:])
        return jax.lax.all_to_all(blocks, axis_name, 0, 0).reshape(x.shape)

    recv = jax.tree.map(lambda x: exchange(to_buffer(x)), inputs)
    recv_valid = exchange(jnp.zeros((size,), bool).at[slot].set(sent, unique_indices=True))
    recv_default = jax.tree.map(lambda x: jnp.zeros((size, *x.shape[1:]), x.dtype), default)
    with without_layout():
        done, packing = compact_apply(fn, recv_valid, recv, recv_default, recv_buckets)
    # Back to the shards the rows came from, then to their rows.
    back = jax.tree.map(exchange, done)
    mine = jax.tree.map(lambda x: jnp.take(x, slot, axis=0), back)
    return scatter_rows(default, order, mine, sent), packing


def escalate_apply(
    fn: Callable[[PyTree, Bool[Array, " n"]], PyTree],
    route: Bool[Array, " b"],
    inputs: PyTree,
    default: PyTree,
    buckets: Sequence[int],
) -> tuple[PyTree, Array]:
    """Runs an escalated tier on the routed rows: `compact_apply` on this shard's rows, or
    `balanced_apply` when the step being traced rebalances (`DataParallel.rebalance`).

    Returns (outputs with leading dim b, the bucket size run, in rows, int32 []).
    """
    layout = active_layout()
    if layout is not None and layout.rebalance and layout.shards > 1:
        out, packing = balanced_apply(
            fn, route, inputs, default, buckets, layout.shards, layout.row_axes
        )
        sizes = (*buckets, exchange_capacity(route.shape[0], layout.shards) * layout.shards)
    else:
        with without_layout():
            out, packing = compact_apply(fn, route, inputs, default, buckets)
        sizes = tuple(buckets)
    return out, jnp.asarray(sorted(set(sizes)), jnp.int32)[packing.bucket]
