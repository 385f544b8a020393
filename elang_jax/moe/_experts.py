"""The four ways to run the selected experts, one function each, all with one signature.

`run(x, expert_ids, gates, plan, weights, act, config)` returns sum_i gates[t, i] *
expert_{ids[t, i]}(x[t]) for every token t (no output bias). Dropped assignments already
carry gate 0; the implementations that do not skip them simply add a zero.

Shape vocabulary: n tokens, d width, e experts, f expert width, k choices, c capacity,
m = n * k assignments.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from elang_jax.kernels import moe_dispatch
from elang_jax.moe._config import MoEConfig, MoEImpl
from elang_jax.moe._routing import Plan


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


def _capacity_apply(
    capacity: int,
    x: Float[Array, "n d"],
    gates: Float[Array, "n k"],
    plan: Plan,
    w: ExpertWeights,
    act: Act,
) -> Float[Array, "n d"]:
    n, d = x.shape
    e = w.w_in.shape[0]
    m = plan.order.shape[0]
    k = m // n
    # Slot of each sorted assignment in the flat [e c] buffer; overflow goes to index e*c,
    # which is out of range for the scatter (dropped) and hits the zero row in the gather.
    fits = plan.position < capacity
    slot = jnp.where(fits, plan.sorted_experts * capacity + plan.position, e * capacity)
    token = jnp.full((e * capacity,), n, jnp.int32)
    token = token.at[slot].set(plan.order % n, mode="drop")
    # [n+1 d]: row n is zero and fills the empty slots
    x_pad = jnp.concatenate([x, jnp.zeros((1, d), x.dtype)], axis=0)
    # [e*c d] -> [e c d]
    xb = jnp.take(x_pad, token, axis=0).reshape(e, capacity, d)

    # One 2-D matmul pair per expert: on XLA CPU this measured faster than the batched
    # einsum over [e c d] (see eval/bench_moe.py); on accelerators both are fine.
    def expert(args):
        xe, w_in, b_in, w_out = args
        return act(xe @ w_in + b_in) @ w_out

    yb = jax.lax.map(expert, (xb, w.w_in, w.b_in, w.w_out))
    # [e c d] -> [e*c+1 d], the last row zero for dropped assignments
    yb = jnp.concatenate([yb.reshape(e * capacity, d), jnp.zeros((1, d), yb.dtype)], axis=0)
    slot_of_assignment = jnp.zeros((m,), jnp.int32).at[plan.order].set(slot)
    # [m d] -> [k n d], choice-major
    per_choice = jnp.take(yb, slot_of_assignment, axis=0).reshape(k, n, d)
    return jnp.einsum("knd,nk->nd", per_choice, gates.astype(per_choice.dtype))


def run_capacity(x, expert_ids, gates, plan: Plan, w: ExpertWeights, act: Act, config: MoEConfig):
    """Expert-sorted [e c d] buffer, one matmul per expert, gated gather back.

    With a capacity factor, C is fixed and overflow is dropped (the drop rule of
    `elang_jax.moe`, already reflected in `gates`). Dropless, C is the smallest of
    `config.dropless_buckets(n)` that holds the busiest expert, picked by `lax.switch`, so each
    bucket compiles once and a balanced batch pays for a small buffer only.
    """
    n = x.shape[0]
    capacity = config.capacity(n)
    if capacity is not None:
        return _capacity_apply(capacity, x, gates, plan, w, act)
    buckets = config.dropless_buckets(n)
    if len(buckets) == 1:
        return _capacity_apply(buckets[0], x, gates, plan, w, act)
    index = jnp.searchsorted(jnp.asarray(buckets, jnp.int32), plan.group_sizes.max())
    branches = [functools.partial(_capacity_apply, c, act=act) for c in buckets]
    return jax.lax.switch(index, [lambda a, b=b: b(*a) for b in branches], (x, gates, plan, w))


_IMPLS = {
    MoEImpl.DENSE: run_dense,
    MoEImpl.RAGGED: run_ragged,
    MoEImpl.CAPACITY: run_capacity,
    MoEImpl.PALLAS: run_pallas,
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
    return _IMPLS[MoEImpl(impl)](x, expert_ids, gates, plan, w, act, config)
