"""The five ways to run the selected experts, one function each, all with one signature.

`run(x, expert_ids, gates, plan, weights, act, config)` returns sum_i gates[t, i] *
expert_{ids[t, i]}(x[t]) for every token t (no output bias). Dropped assignments already
carry gate 0; the implementations that do not skip them simply add a zero.

Shape vocabulary: n tokens, d width, e experts, f expert width, k choices, c capacity,
m = n * k assignments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from elang_jax.kernels import moe_dispatch  # pyright: ignore[reportMissingImports]  # kernels/ via package-dir
from elang_jax.moe._config import MoEConfig, MoEImpl
from elang_jax.moe._routing import Plan
from elang_jax.moe._tiled import tiled_pass


@dataclasses.dataclass(frozen=True)
class ExpertWeights:
    """w_in [e d f], b_in [e f], w_out [e f d]: expert e owns neurons e*f..(e+1)*f-1."""

    w_in: Float[Array, "e d f"]
    b_in: Float[Array, "e f"]
    w_out: Float[Array, "e f d"]


jax.tree_util.register_dataclass(
    ExpertWeights, data_fields=["w_in", "b_in", "w_out"], meta_fields=[]
)

Act = Callable[[jax.Array], jax.Array]


def run_dense(x, expert_ids, gates, plan: Plan, w: ExpertWeights, act: Act, config: MoEConfig):
    """Reference: every expert on every token, unselected experts weighted 0."""
    e = w.w_in.shape[0]
    # [n k e] one-hot -> [n e] combine weight of each expert (0 when not selected)
    weight = jnp.einsum("nke,nk->ne", jax.nn.one_hot(expert_ids, e, dtype=gates.dtype), gates)
    # [n e f]
    h = act(jnp.einsum("nd,edf->nef", x, w.w_in) + w.b_in[None])
    h = h * weight[..., None].astype(h.dtype)
    # [n e f] x [e f d] -> [n d]
    return jnp.einsum("nef,efd->nd", h, w.w_out)


def _grouped_ffn(xs, plan: Plan, w: ExpertWeights, act: Act):
    # [m d] rows sorted by expert -> [m d]; ragged_dot runs one matmul per contiguous group.
    assert plan.sorted_experts is not None  # made by the plan for the grouped paths
    h = jax.lax.ragged_dot(xs, w.w_in, plan.group_sizes)
    h = act(h + jnp.take(w.b_in, plan.sorted_experts, axis=0))
    return jax.lax.ragged_dot(h, w.w_out, plan.group_sizes)


def run_ragged(x, expert_ids, gates, plan: Plan, w: ExpertWeights, act: Act, config: MoEConfig):
    """Sort by expert, grouped matmul with `jax.lax.ragged_dot`, gather back with gates."""
    k = expert_ids.shape[1]
    xs = moe_dispatch.dispatch_reference(x, plan.order, k)
    ys = _grouped_ffn(xs, plan, w, act)
    return moe_dispatch.combine_reference(ys, plan.order, gates)


def run_pallas(x, expert_ids, gates, plan: Plan, w: ExpertWeights, act: Act, config: MoEConfig):
    """Pallas dispatch kernel, `ragged_dot` grouped matmul, Pallas gated combine kernel."""
    k = expert_ids.shape[1]
    kw = dict(block_rows=config.block_rows, interpret=config.interpret)
    xs = moe_dispatch.dispatch(x, plan.order, k, **kw)
    ys = _grouped_ffn(xs, plan, w, act)
    return moe_dispatch.combine(ys, plan.order, gates, **kw)


def _capacity_pass(
    x: Float[Array, "n d"],
    gates: Float[Array, "n k"],
    plan: Plan,
    w: ExpertWeights,
    act: Act,
    *,
    offset: int | jax.Array,
    capacity: int,
) -> Float[Array, "n d"]:
    """The assignments ranked offset..offset+capacity-1 inside their experts, gated and summed.

    They are packed into a static [e c d] buffer, each expert runs one matmul pair on its c
    rows, and every token gathers its outputs back. Empty slots compute on token 0 and are
    never read back; assignments outside this pass read slot 0 with gate 0. No zero row is
    concatenated to either buffer: on XLA CPU that copy measured up to ~10 ms at E=16.
    """
    n, d = x.shape
    e = w.w_in.shape[0]
    k = gates.shape[1]
    rank = plan.rank - offset
    inside = (rank >= 0) & (rank < capacity)
    # [m]: slot of each assignment in the flat [e*c] buffer; e*c (out of range) when outside
    slot = jnp.where(inside, plan.expert * capacity + rank, e * capacity)
    token_of_slot = jnp.zeros((e * capacity,), jnp.int32)
    token_of_slot = token_of_slot.at[slot].set(jnp.arange(n * k, dtype=jnp.int32) % n, mode="drop")
    # [e*c d] -> [e c d]
    xb = jnp.take(x, token_of_slot, axis=0).reshape(e, capacity, d)
    xb = jax.lax.optimization_barrier(xb)

    # One 2-D matmul pair per expert: on XLA CPU this measured faster than the batched
    # einsum over [e c d] (see eval/bench_moe.py); on accelerators both are fine.
    def expert(args):
        xe, w_in, b_in, w_out = args
        # [c d] @ [d f] + [1 f] -> [c f] -> [c d]
        return act(xe @ w_in + b_in[None, :]) @ w_out

    # [e c d] -> [e*c d]
    yb = jax.lax.map(expert, (xb, w.w_in, w.b_in, w.w_out)).reshape(e * capacity, d)
    yb = jax.lax.optimization_barrier(yb)
    # [m] -> [k n]: choice-major; one gather per choice, summed in a single fused loop
    # (materialising [k n d] first measured ~2 ms slower)
    slot = jnp.where(inside, slot, 0).reshape(k, n)
    # [k n] -> [n k]
    inside = inside.reshape(k, n).T
    gates = (gates * inside).astype(yb.dtype)

    def gathered(i: int) -> Float[Array, "n d"]:
        # A select, not only the zero gate: slot 0 holds another token's row, and 0 * NaN
        # would carry that token's non-finite values into this one's output.
        row = jnp.take(yb, slot[i], axis=0) * gates[:, i : i + 1]
        return jnp.where(inside[:, i : i + 1], row, 0)

    y = gathered(0)
    for i in range(1, k):
        y = y + gathered(i)
    return y


def run_capacity(x, expert_ids, gates, plan: Plan, w: ExpertWeights, act: Act, config: MoEConfig):
    """Expert-major [e c d] buffers, one matmul pair per expert, gated gather back.

    With a capacity factor: one buffer of C = `config.capacity(n)`; overflow is dropped (the
    drop rule of `elang_jax.moe`, already reflected in `gates`).

    Dropless: the main buffer holds every expert's first C0 assignments and always runs; a
    scan then takes the assignments past C0 in chunks of a fixed size, skipping (`lax.cond`)
    every chunk past the busiest expert's load. A balanced batch runs no chunk; an
    adversarial one (every token on one expert) runs (n - C0) / chunk of them and stays
    exact. A `lax.switch` over overflow buckets was the first design: XLA CPU paid for its
    largest untaken branch on every call (~5 ms of ~20), while a chunk is small.
    """
    n = x.shape[0]
    capacity = config.capacity(n)
    if capacity is not None:
        return _capacity_pass(x, gates, plan, w, act, offset=0, capacity=capacity)
    main, chunk = config.dropless_sizes(n)
    y = _capacity_pass(x, gates, plan, w, act, offset=0, capacity=main)
    if main >= n:
        return y
    busiest = plan.group_sizes.max()
    # Only the per-assignment view of the plan enters the loop: a loop's operands are
    # computed even when unused, and the sorted view costs a sort.
    ranked = dataclasses.replace(plan, order=None, sorted_experts=None, position=None)

    def trip(extra, offset):
        # a trip past the busiest expert's load would only read zero rows: skip it
        extra = extra + jax.lax.cond(
            offset < busiest,
            lambda: _capacity_pass(x, gates, ranked, w, act, offset=offset, capacity=chunk),
            lambda: jnp.zeros_like(x),
        )
        return extra, None

    # A scan with a static trip count, not a while loop, so that gradients flow. It
    # accumulates into its own zeros: carrying `y` through it measured ~5 ms slower.
    offsets = jnp.arange(main, n, chunk, dtype=jnp.int32)
    extra, _ = jax.lax.scan(trip, jnp.zeros_like(y), offsets)
    return y + extra


def run_tiled(x, expert_ids, gates, plan: Plan, w: ExpertWeights, act: Act, config: MoEConfig):
    """The CAPACITY main pass, then the assignments past it in tiles of T rows (dropless).

    Every expert's first C0 assignments (`MoEConfig.tiled_sizes`, 0.75x the mean load)
    run in the static [e c d] buffer of `_capacity_pass`; the rest, however skewed, run in the
    tiles of `elang_jax.moe._tiled`, each expert on its own overflow only. With a
    capacity factor C the assignments past C are not run (their gates are 0).
    """
    n = x.shape[0]
    capacity = config.capacity(n)
    main, tile = config.tiled_sizes(n)
    if capacity is not None and capacity <= main:
        return _capacity_pass(x, gates, plan, w, act, offset=0, capacity=capacity)
    y = _capacity_pass(x, gates, plan, w, act, offset=0, capacity=main)
    if main >= n:
        return y
    return tiled_pass(
        x, gates, plan, w.w_in, w.b_in, w.w_out, act, y, offset=main, limit=capacity, tile=tile
    )


_IMPLS = {
    MoEImpl.DENSE: run_dense,
    MoEImpl.RAGGED: run_ragged,
    MoEImpl.CAPACITY: run_capacity,
    MoEImpl.PALLAS: run_pallas,
    MoEImpl.TILED: run_tiled,
}


def run(
    impl: MoEImpl,
    x: Float[Array, "n d"],
    expert_ids: Int[Array, "n k"],
    gates: Float[Array, "n k"],
    plan: Plan,
    w: ExpertWeights,
    act: Act,
    config: MoEConfig,
) -> Float[Array, "n d"]:
    """Runs the selected experts with `impl`; no tokens (n = 0) give an empty [0 d] output.

    The empty case is decided here, from the static shape, because the sorted and Pallas
    paths cannot form their [m d] buffers and kernel tiles with m = 0 rows.
    """
    if x.shape[0] == 0:
        return jnp.zeros((0, w.w_out.shape[-1]), w.w_out.dtype)
    return _IMPLS[MoEImpl(impl)](x, expert_ids, gates, plan, w, act, config)
