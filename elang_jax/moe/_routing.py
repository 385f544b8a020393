"""Expert selection, the expert-sorted assignment plan, the capacity drop rule, aux losses.

Shape vocabulary: n tokens, d width, e experts, k choices per token, g groups, c capacity,
m = n * k assignments, f expert width (neurons per expert).

Assignments are numbered choice-major: `a = i * n + t` is token t's i-th choice. Sorting them
stably by expert therefore puts, inside each expert, all first choices (in token order) before
any second choice. That order is the drop priority.

Drop rule (only with a capacity factor): an expert keeps its first C assignments in that
order and drops the rest; a dropped assignment contributes nothing (the residual connection
around the FFN carries the token). Worked example, n = 4 tokens, k = 2, E = 2, C = 3:
  choices (first, second) per token: t0 (e0, e1), t1 (e0, e1), t2 (e0, e1), t3 (e1, e0)
  e0 receives, in priority order: t0.1st t1.1st t2.1st | t3.2nd  -> t3's second choice dropped
  e1 receives: t3.1st | t0.2nd t1.2nd t2.2nd -> keeps t3.1st t0.2nd t1.2nd, drops t2.2nd
First choices are never dropped before any second choice of the same expert, and earlier
tokens win ties, so the result does not depend on the implementation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from elang_jax.moe._config import GateKind, MoEConfig


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where every assignment goes in the expert-sorted buffer.

    Two views of the same plan. The sorted view (`order` and what follows it) feeds the
    grouped-matmul implementations; the per-assignment view (`expert`, `rank`) needs no sort
    and feeds the capacity buffers. Under `jit` the view an implementation does not use is
    dead code and costs nothing.

    Attributes:
      expert: [m] expert of each choice-major assignment.
      rank: [m] its rank inside its expert (0 = highest priority); equals `position` at the
        assignment's sorted slot.
      group_sizes: [e] assignments per expert (before drops).
      order: [m] assignments sorted by expert (stable: priority order inside an expert).
      sorted_experts: [m] expert of each sorted slot.
      position: [m] rank of each sorted slot inside its expert.
    """

    expert: Int[Array, " m"]
    rank: Int[Array, " m"]
    group_sizes: Int[Array, " e"]
    # None in a plan reduced to its per-assignment view (the dropless CAPACITY loop)
    order: Int[Array, " m"] | None
    sorted_experts: Int[Array, " m"] | None
    position: Int[Array, " m"] | None


jax.tree_util.register_dataclass(
    Plan,
    data_fields=["expert", "rank", "group_sizes", "order", "sorted_experts", "position"],
    meta_fields=[],
)


def plan(expert_ids: Int[Array, "n k"], num_experts: int) -> Plan:
    """Ranks the choice-major assignments inside their experts, and sorts them by expert."""
    # [n k] -> [k n] -> [m]: choice-major, so first choices come first within an expert
    flat = expert_ids.T.reshape(-1).astype(jnp.int32)
    # [m e]; a running count per expert ranks each assignment without a sort (a sort of m
    # keys measured ~1 ms of a ~20 ms MoE FFN on XLA CPU)
    one_hot = jax.nn.one_hot(flat, num_experts, dtype=jnp.int32)
    rank = (jnp.cumsum(one_hot, axis=0) * one_hot).sum(-1) - 1
    group_sizes = one_hot.sum(0)
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    sorted_experts = flat[order]
    starts = jnp.cumsum(group_sizes) - group_sizes
    position = jnp.arange(flat.shape[0], dtype=jnp.int32) - starts[sorted_experts]
    return Plan(flat, rank, group_sizes, order, sorted_experts, position)


def keep_mask(p: Plan, n: int, k: int, capacity: int | None) -> Bool[Array, "n k"]:
    """Which assignments survive the capacity drop rule (all of them when dropless)."""
    if capacity is None:
        return jnp.ones((n, k), bool)
    # [m] -> [k n] -> [n k]
    return (p.rank < capacity).reshape(k, n).T


def select(
    logits: Float[Array, "n e"], config: MoEConfig
) -> tuple[Int[Array, "n k"], Float[Array, "n k"]]:
    """Top-k experts per token (top k/G in each of G groups) and their gates."""
    n, e = logits.shape
    g, per = config.num_groups, config.experts_per_group
    kg = config.top_k // g
    # [n e] -> [n g e/g]: expert prototyping routes inside each group independently
    grouped = logits.reshape(n, g, per)
    top_logits, local = jax.lax.top_k(grouped, kg)
    # [n g kg] -> [n k], local ids mapped back to global expert ids g * E/G + j
    # (an explicit k, not -1: with n = 0 tokens a -1 cannot be inferred)
    expert_ids = (local + (jnp.arange(g, dtype=local.dtype) * per)[None, :, None]).reshape(
        n, config.top_k
    )
    if config.gate is GateKind.NONE:
        gates = jnp.ones((n, config.top_k), jnp.float32)
    else:
        # softmax over each group's experts (G = 1: over all), read at the chosen ones
        lse = jax.nn.logsumexp(grouped.astype(jnp.float32), axis=-1, keepdims=True)
        probs = jnp.exp(top_logits.astype(jnp.float32) - lse)
        if config.renormalize:
            probs = probs / probs.sum(-1, keepdims=True)
        gates = probs.reshape(n, config.top_k)
    return expert_ids.astype(jnp.int32), gates


def load_balance_loss(
    logits: Float[Array, "n e"], expert_ids: Int[Array, "n k"], num_experts: int
) -> Float[Array, ""]:
    """Switch Transformer loss E * sum_e f_e * P_e (1 when perfectly balanced).

    f_e is the fraction of assignments routed to e, P_e the mean router probability of e.
    With no tokens (n = 0) there is nothing to balance: the loss is 0, not NaN.
    """
    if expert_ids.size == 0:
        return jnp.zeros((), jnp.float32)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    counts = jnp.bincount(expert_ids.reshape(-1), length=num_experts).astype(jnp.float32)
    fraction = counts / expert_ids.size
    return num_experts * jnp.sum(fraction * probs.mean(0))


def router_z_loss(logits: Float[Array, "n e"]) -> Float[Array, ""]:
    """ST-MoE router z-loss: mean squared log-partition, keeps logits small (0 for n = 0)."""
    if logits.shape[0] == 0:
        return jnp.zeros((), jnp.float32)
    return jnp.mean(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1) ** 2)
