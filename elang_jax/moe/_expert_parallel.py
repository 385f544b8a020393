"""Expert-parallel MoE: experts split over the mesh's "expert" axis, tokens sent to them.

Inside `jax.shard_map`, each device holds E / P_e experts and its own slice of the tokens
(split over the batch axes, ("data", "expert")). Per device:
  1. route its tokens (the router is replicated) and apply the layer's capacity rule with
     the *global* priority of every assignment (per-device counts are all-gathered), so the
     drops are exactly the unsharded layer's;
  2. pack each assignment into a static send buffer [P_e, E/P_e, B, d]: block p goes to the
     device holding experts p E/P_e .. (p+1) E/P_e - 1, row (j, r) is the r-th assignment of
     this device to local expert j;
  3. `lax.all_to_all` over "expert" (static shapes: `ragged_all_to_all` has no XLA:CPU
     implementation, jax #34755), each device runs its experts on [P_e B] rows each,
     `all_to_all` back, and every token sums its gated outputs.

B, the rows per (source device, expert) pair: by default the device's token count, which
no routing can exceed (a token picks an expert at most once), so the layer is dropless
whenever the unsharded one is. That guarantee costs: every expert then computes P_e B rows,
E / k times the active work, like a dense FFN. A smaller B (`ExpertParallelConfig.
buffer_factor`, e.g. 1.25-2 times the mean load) saves memory, communication and compute in
proportion; an assignment ranked past B on its device is dropped (gate 0,
the residual carries the token) and counted in `overflow_fraction`. Worked example, 2
devices, 4 experts (2 each), top-1, 4 tokens per device, B = 2: device 0 sends tokens
t0 t1 t2 to expert 0 -> t0 and t1 fill its two rows, t2 overflows and is dropped.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Float

from elang_jax.models._common import activation_fn
from elang_jax.moe import _routing
from elang_jax.moe._config import RouterKind
from elang_jax.moe._layer import MoEFeedForward, MoEOutput

EXPERT_AXIS = "expert"
TOKEN_AXES = ("data", "expert")
_EXPERT_PARAMS = ("w_in", "b_in", "w_out")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExpertParallelConfig:
    """How tokens travel to the experts.

    Attributes:
      buffer_factor: None: B = the device's token count (never overflows). A number f:
        B = max(min_buffer, ceil(f * n_local * k / E)), capped at n_local; assignments past
        B on their device are dropped.
      min_buffer: floor on B when `buffer_factor` is set.
    """

    buffer_factor: float | None = None
    min_buffer: int = 4

    def __post_init__(self):
        if self.buffer_factor is not None and not 0 < self.buffer_factor < math.inf:
            raise ValueError(
                f"buffer_factor must be positive and finite, or None; got {self.buffer_factor=}"
            )
        if not isinstance(self.min_buffer, int) or self.min_buffer < 1:
            raise ValueError(f"min_buffer must be a positive int, got {self.min_buffer=}")

    def buffer_rows(self, local_tokens: int, top_k: int, num_experts: int) -> int:
        """B for `local_tokens` tokens per device."""
        if self.buffer_factor is None:
            return max(local_tokens, 1)
        mean = local_tokens * top_k / num_experts
        return max(1, min(local_tokens, max(self.min_buffer, math.ceil(self.buffer_factor * mean))))

    @classmethod
    def dropless(cls) -> ExpertParallelConfig:
        return cls()

    @classmethod
    def tiny(cls, **kw) -> ExpertParallelConfig:
        """For tests: a buffer of the mean load, so skewed routing overflows."""
        return cls(**{"buffer_factor": 1.0, "min_buffer": 1, **kw})


@dataclasses.dataclass(frozen=True)
class ExpertParallelOutput:
    """The layer's `MoEOutput` (drops from the capacity rule and the buffers both counted in
    `dropped_fraction`) and `overflow_fraction`: the assignments the buffers dropped."""

    moe: MoEOutput
    overflow_fraction: Float[Array, ""]


jax.tree_util.register_dataclass(
    ExpertParallelOutput, data_fields=["moe", "overflow_fraction"], meta_fields=[]
)


def _axes_in(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in TOKEN_AXES if a in mesh.axis_names)


def expert_parallel_apply(
    moe: MoEFeedForward,
    x: Float[Array, "... d"],
    mesh: Mesh,
    config: ExpertParallelConfig | None = None,
) -> ExpertParallelOutput:
    """`moe.apply(x)` with the experts split over `mesh`'s "expert" axis.

    Equal to the unsharded layer (outputs to float tolerance, expert ids and gates exactly)
    whenever no buffer overflows, which the default config guarantees.

    Raises:
      ValueError: the mesh lacks an "expert" axis, its size does not divide the experts, or
        the token count does not divide over the batch axes.
      NotImplementedError: ORACLE and CENTROID routers (they read every expert's weights).
    """
    config = config or ExpertParallelConfig()
    mc = moe.config
    if mc.router not in (RouterKind.LINEAR, RouterKind.MLP):
        raise NotImplementedError(
            f"expert parallel needs a learned router (linear or mlp), got router={mc.router}: "
            "oracle and centroid routers read every expert's weights"
        )
    if EXPERT_AXIS not in mesh.axis_names:
        raise ValueError(f"the mesh has no {EXPERT_AXIS!r} axis: {mesh.axis_names}")
    n_ep = mesh.shape[EXPERT_AXIS]
    e, k, d = mc.num_experts, mc.top_k, moe.d_model
    if e % n_ep:
        raise ValueError(f"the expert axis ({n_ep}) must divide num_experts ({e})")
    if x.ndim < 1 or x.shape[-1] != d:
        raise ValueError(f"x must have shape [..., {d}], got {x.shape}")
    token_axes = _axes_in(mesh)
    shards = math.prod(mesh.shape[a] for a in token_axes)
    lead = x.shape[:-1]
    # [... d] -> [n d]
    xf = x.reshape(-1, d)
    n = xf.shape[0]
    if n % shards:
        raise ValueError(f"{n} tokens do not divide over the {shards} token shards {token_axes}")
    n_local = n // shards
    rows = config.buffer_rows(n_local, k, e)
    capacity = mc.capacity(n)
    if capacity is not None:
        rows = min(rows, capacity)  # no expert keeps more than C assignments in all
    graphdef, state = nnx.split(moe)

    def spec(path, _):
        name = path[-2].key if len(path) > 1 else None
        return PartitionSpec(EXPERT_AXIS) if name in _EXPERT_PARAMS else PartitionSpec()

    state_specs = jax.tree_util.tree_map_with_path(spec, state)
    tok = PartitionSpec(token_axes)

    def local(state, xl):
        layer = nnx.merge(graphdef, state)
        return _local_step(layer, xl, n_ep, rows, capacity, token_axes)

    rep = PartitionSpec()
    y, ids, gates, logits, stats = jax.shard_map(
        local, mesh=mesh, in_specs=(state_specs, tok), out_specs=(tok, tok, tok, tok, rep)
    )(state, xf)
    total = max(n * k, 1)
    load = stats["load"]
    if n:
        # the Switch loss of `_routing.load_balance_loss`, from the global sums
        lb = e * jnp.sum(load.astype(jnp.float32) / total * stats["probs"] / n)
        z = stats["lse2"] / n
    else:
        lb = z = jnp.zeros((), jnp.float32)
    out = MoEOutput(
        output=y.reshape(*lead, d).astype(x.dtype),
        expert_ids=ids,
        gates=gates,
        router_logits=logits,
        expert_load=load.astype(jnp.float32) / total,
        dropped_fraction=1.0 - stats["sent"].astype(jnp.float32) / total,
        load_balance_loss=lb,
        router_z_loss=z,
        aux_loss=mc.load_balance_weight * lb + mc.z_loss_weight * z,
    )
    overflow = (stats["kept"] - stats["sent"]).astype(jnp.float32) / total
    return ExpertParallelOutput(out, overflow)


def _local_step(layer: MoEFeedForward, x, n_ep: int, rows: int, capacity: int | None, token_axes):
    """One device's share: route, global drop rule, all-to-all, local experts, back."""
    mc = layer.config
    e, k = mc.num_experts, mc.top_k
    n_local, d = x.shape
    w = layer.weights()
    xw = x.astype(w.w_in.dtype)
    logits = layer.router_logits(x)
    expert_ids, gates = _routing.select(logits, mc)
    plan = _routing.plan(expert_ids, e)
    # [k n_local e] one-hot of each choice
    one_hot = jax.nn.one_hot(expert_ids.T, e, dtype=jnp.int32)
    counts = one_hot.sum(1)  # [k e] this device's assignments per choice and expert
    # [k n_local] rank of each assignment inside (its choice, its expert) on this device
    within = ((jnp.cumsum(one_hot, axis=1) - 1) * one_hot).sum(-1)
    # [P k e]: every token shard's counts, in the global token order
    every = jax.lax.all_gather(counts, token_axes)
    me = jax.lax.axis_index(token_axes)
    before_me = jnp.where(jnp.arange(every.shape[0])[:, None, None] < me, every, 0).sum(0)
    total = every.sum(0)  # [k e]
    earlier_choices = jnp.cumsum(total, axis=0) - total  # [k e]
    # global priority of each assignment (choice-major over all tokens), as unsharded
    base = earlier_choices + before_me  # [k e]
    # [k n_local]: look up base[i, expert of (i, t)]
    global_rank = within + jnp.take_along_axis(base, expert_ids.T, axis=1)
    keep = jnp.ones_like(global_rank, bool) if capacity is None else global_rank < capacity
    # slot of each local assignment in the send buffer: expert-major, B rows per expert
    rank = plan.rank.reshape(k, n_local)  # choice-major local rank inside the expert
    fits = rank < rows
    sent = keep & fits
    slot = jnp.where(sent, expert_ids.T * rows + rank, e * rows)  # e*rows: out of range
    token_of_slot = jnp.zeros((e * rows,), jnp.int32)
    token_ids = jnp.broadcast_to(jnp.arange(n_local, dtype=jnp.int32)[None, :], (k, n_local))
    token_of_slot = token_of_slot.at[slot.reshape(-1)].set(token_ids.reshape(-1), mode="drop")
    # [e*B d] -> [P_e, (e/P_e) B, d]: block p goes to the device holding experts of block p
    send = jnp.take(xw, token_of_slot, axis=0).reshape(n_ep, (e // n_ep) * rows, d)
    recv = jax.lax.all_to_all(send, EXPERT_AXIS, 0, 0)
    e_local = e // n_ep
    # [P_e, e_l B, d] -> [P_e e_l B d] -> [e_l, P_e B, d]: each local expert's rows
    xe = recv.reshape(n_ep, e_local, rows, d).transpose(1, 0, 2, 3).reshape(e_local, -1, d)
    act = activation_fn(layer.activation)
    # [e_l c d] x [e_l d f] + [e_l 1 f] -> [e_l c f], c = P_e B rows per local expert
    h = act(jnp.einsum("ecd,edf->ecf", xe, w.w_in) + w.b_in[:, None, :])
    # [e_l c f] x [e_l f d] -> [e_l c d]
    ye = jnp.einsum("ecf,efd->ecd", h, w.w_out)
    # back: [e_l, P_e B, d] -> [P_e, e_l B, d]
    back = ye.reshape(e_local, n_ep, rows, d).transpose(1, 0, 2, 3).reshape(n_ep, -1, d)
    out = jax.lax.all_to_all(back, EXPERT_AXIS, 0, 0).reshape(e * rows, d)
    gates = gates * keep.T  # the capacity rule (buffer overflow is reported separately)
    used = (gates * fits.T).astype(out.dtype)
    safe = jnp.where(sent, slot, 0)
    y = jnp.zeros((n_local, d), out.dtype)
    for i in range(k):
        row = jnp.take(out, safe[i], axis=0) * used[:, i : i + 1]
        y = y + jnp.where(sent[i][:, None], row, 0)
    if layer.b_out is not None:
        # [n d] + [1 d]
        y = y + layer.b_out[...].astype(y.dtype)[None, :]
    stats = dict(
        sent=jax.lax.psum(sent.sum(), token_axes),
        kept=jax.lax.psum(keep.sum(), token_axes),
        lse2=jax.lax.psum(
            jnp.sum(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1) ** 2), token_axes
        ),
        probs=jax.lax.psum(jax.nn.softmax(logits.astype(jnp.float32), axis=-1).sum(0), token_axes),
        load=jax.lax.psum(plan.group_sizes, token_axes),
    )
    return y, expert_ids, gates * fits.T, logits, stats


class ExpertParallelFFN(nnx.Module):
    """A `MoEFeedForward` run expert parallel on `mesh`: drops in as `layer.ffn`.

    Example::

        mesh = sharding.make_mesh(data=2, expert=4)
        layer.ffn = ExpertParallelFFN(layer.ffn, mesh)
        sharding.shard_model(model, mesh)  # experts over "expert"
        logits = jax.jit(forward)(model, jax.device_put(ids, sharding.batch_sharding(mesh)))
    """

    def __init__(self, moe: MoEFeedForward, mesh: Mesh, config: ExpertParallelConfig | None = None):
        if not isinstance(moe, MoEFeedForward):
            raise TypeError(f"moe must be a MoEFeedForward, got {type(moe)}")
        self.moe = moe
        self.mesh = mesh
        self.ep_config = config or ExpertParallelConfig()

    def apply(self, x: Float[Array, "... d"]) -> ExpertParallelOutput:
        return expert_parallel_apply(self.moe, x, self.mesh, self.ep_config)

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        return self.apply(x).moe.output
