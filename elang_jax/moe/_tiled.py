"""TILED: dropless MoE whose cost follows each expert's own load, not the busiest one's.

Two passes (`elang_jax.moe._experts.run_tiled` chains them):
  1. Main pass: every expert's first C0 assignments (C0 = 0.75x the mean load n k / E,
     `MoEConfig.tiled_sizes`) run in CAPACITY's static [e c d] buffer, one matmul pair
     per expert, gathered back with their gates.
  2. Overflow, this module: the assignments past C0, sorted by expert, each expert's run
     cut into tiles of a fixed T rows (`MoEConfig.tile_size`); a scan runs each used tile
     through its expert and skips the rest (`lax.cond`), scatter-adding the gated rows into
     the result. An expert with 3x the mean load runs its 2.25x of overflow there; an
     expert under C0, nothing.

The overflow, step by step, for n tokens, k choices, E experts (m = n * k assignments):
  a. Place every assignment in an expert-sorted list: expert e owns slots
     start_e .. start_e + size_e - 1, in priority order (its `rank` from the plan: a
     scatter, no sort); its overflow is the slots from start_e + C0 on.
  b. Tile table: expert e gets ceil(overflow_e / T) tiles, numbered in expert order. The
     scan has a static ceil((m - C0) / T) + E tiles, the most any routing can use (only an
     expert past C0 has overflow); the spare ones are skipped.
  c. Each used tile: gather its T tokens, run its expert's matmul pair on [T d], and
     scatter-add the gated rows; rows that are not the tile's own (the next expert's
     slots, the padding) are scattered out of range and dropped.

Worked example, n = 8, k = 2, E = 4 (m = 16, mean 4), C0 = 4, T = 1: sizes (7, 5, 4, 0):
the main pass runs 4 x 4 = 16 rows (4 of them empty slots of expert 3), the overflow
3 + 1 = 4 tiles: 20 rows for 16 assignments. Dropless CAPACITY sizes every expert by the
busiest: 4 x 7 = 28 rows. With every token on experts 0 and 1 (sizes 8, 8, 0, 0) CAPACITY
runs 32 rows, TILED 16 + 8 = 24.

Cost bound: at most E C0 + (m - C0) + E (T - 1) rows on any routing (every token on one
expert, empty experts, top_k = E): under 2x the active rows at the defaults (C0 = 0.75x
the mean load, T <= a quarter of it), about 1.1x on balanced routing. Dropless CAPACITY's
worst case is E x n rows, E / k times the active rows.

Batch invariance: a row's output is the sum of its own experts on its own input, gated by
its own router. Its neighbours decide only whether an assignment runs in the main buffer or
in a tile, i.e. which rows share its matmul; nothing is dropped. The tests check that a
row's output does not change when its neighbours and their routing change (adversarial
routings included), up to float rounding: a matmul of another shape may round a row's
result differently in the last bit (measured: 1 ulp; tiles alone were bit-identical).
Under `vmap` the tile `cond` becomes a select that runs every tile: call the layer on
flattened tokens, as `MoEFeedForward` does.

Measured on XLA CPU (4,096 tokens, d 384, 8 experts of 192, top-2, ReLU, against the
dense FFN in the same interleaved run, median of 12, the routing given): 2.8x at max/mean
load 1.05 (CAPACITY 2.9x), 2.05x on the routing of the demo's worst layer (2.30; CAPACITY
1.15x), 2.2x at 1.92 (1.45x), 2.6x at 3.98 (0.84x). A main buffer of 1.05x the mean
load (CAPACITY's) measured 2.8x, 2.0x, 2.1x, 2.0x; of 0.5x, 2.3x, 2.1x. The designs dropped:
  * tiles only, no main pass: 1.9-2.0x at every load, balanced included. A scan step per
    128 rows (72 steps) costs ~4 ms more than CAPACITY's 8 large matmul pairs, and slicing
    an expert's weights for each tile ~2 ms more;
  * one `lax.switch` per expert over a ladder of row counts: 2.5x balanced; XLA copies
    the [n d] result into and out of every switch (a cond's carried operand is copied);
  * tiles writing an expert-sorted [m d] buffer gathered back: no faster than the
    scatter-add; tiles of 64 rows: per-tile overhead; of 256: no faster than 128.

Shape vocabulary: n tokens, d width, e experts, f expert width, k choices, m = n * k
assignments, t tiles, T rows of a tile.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from elang_jax.moe._routing import Plan


def tile_table(
    counts: Int[Array, " e"], starts: Int[Array, " e"], m: int, tile: int
) -> tuple[Int[Array, " t"], Int[Array, " t"], Int[Array, " t"]]:
    """Expert, first slot and slot limit of each of the ceil(m / T) + E static tiles, for
    `counts` slots from `starts` per expert (m: the most they can add up to).

    A tile runs the slots first .. first + T - 1 and keeps those below `limit`; a spare
    tile (past the used ones) has limit 0 and is skipped.
    """
    e = counts.shape[0]
    tiles = (counts + tile - 1) // tile
    ends = jnp.cumsum(tiles)
    j = jnp.arange(-(-m // tile) + e, dtype=jnp.int32)
    used = j < ends[-1]
    # [t]: the expert whose tiles include j (spare tiles: the last one, never run)
    expert = jnp.minimum(jnp.searchsorted(ends, j, side="right"), e - 1).astype(jnp.int32)
    first = starts[expert] + (j - (ends - tiles)[expert]) * tile
    limit = starts[expert] + counts[expert]
    return expert, jnp.where(used, first, 0), jnp.where(used, limit, 0)


def tiled_pass(
    x: Float[Array, "n d"],
    gates: Float[Array, "n k"],
    plan: Plan,
    w_in: Float[Array, "e d f"],
    b_in: Float[Array, "e f"],
    w_out: Float[Array, "e f d"],
    act,
    y: Float[Array, "n d"],
    *,
    offset: int,
    limit: int | None,
    tile: int,
) -> Float[Array, "n d"]:
    """y plus the assignments ranked offset..limit-1 inside their experts, gated, in tiles.

    Args:
      y: [n d] what the tiles add to (the main pass's output).
      offset: the rank of an expert's first assignment in this pass (0: all of them).
      limit: the rank past its last one (None: every assignment; a capacity C: the rest
        are dropped, with gate 0 already, and are not run).
      tile: T, rows per tile.
    """
    n, d = x.shape
    k = gates.shape[1]
    m = n * k
    sizes = plan.group_sizes.astype(jnp.int32)
    capped = sizes if limit is None else jnp.minimum(sizes, limit)
    # [e] this pass's assignments of each expert, and the slot of its first one in the
    # expert-sorted list (every assignment keeps a slot there, dropped ones included)
    counts = jnp.maximum(capped - offset, 0)
    starts = jnp.cumsum(sizes) - sizes + offset
    # [m]: sorted slot of each choice-major assignment, a permutation of range(m)
    slot = jnp.cumsum(sizes)[plan.expert] - sizes[plan.expert] + plan.rank
    # T padding slots: a tile's slice never runs past the end, where `dynamic_slice` would
    # clamp its start and shift its rows.
    token_of_slot = (
        jnp.zeros((m + tile,), jnp.int32)
        .at[slot]
        .set(jnp.arange(m, dtype=jnp.int32) % n, unique_indices=True)
    )
    # [n k] -> [k n] -> [m]: the gates in the assignments' choice-major order
    gate_of_slot = (
        jnp.zeros((m + tile,), x.dtype)
        .at[slot]
        .set(gates.T.reshape(m).astype(x.dtype), unique_indices=True)
    )
    # at most m - offset assignments are past `offset` (an expert past it holds `offset`)
    experts, firsts, limits = tile_table(counts, starts, max(m - offset, 1), tile)

    def run_tile(y, operands):
        expert, first, limit = operands
        # [T]: the tile's tokens; rows that are not its own (the next expert's slots, the
        # padding, a spare tile's) scatter to row n, out of range: dropped, nothing added
        tokens = jax.lax.dynamic_slice(token_of_slot, (first,), (tile,))
        gate = jax.lax.dynamic_slice(gate_of_slot, (first,), (tile,))
        tokens = jnp.where(first + jnp.arange(tile, dtype=jnp.int32) < limit, tokens, n)

        def compute():
            w1 = jax.lax.dynamic_index_in_dim(w_in, expert, keepdims=False)
            b1 = jax.lax.dynamic_index_in_dim(b_in, expert, keepdims=False)
            w2 = jax.lax.dynamic_index_in_dim(w_out, expert, keepdims=False)
            # [T d] @ [d f] + [1 f] -> [T f] -> [T d], times [T 1]
            xe = jnp.take(x, tokens, axis=0, mode="clip")
            return (act(xe @ w1 + b1[None, :]) @ w2) * gate[:, None]

        # Only the [T d] tile goes through the cond: the [n d] result passed through a
        # cond is copied in and out of it (measured, see the module docstring).
        ye = jax.lax.cond(limit > 0, compute, lambda: jnp.zeros((tile, d), x.dtype))
        return y.at[tokens].add(ye, mode="drop"), None

    # The result is the scan's carry, which XLA updates in place.
    y, _ = jax.lax.scan(run_tile, y, (experts, firsts, limits))
    return y
