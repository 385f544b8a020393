"""`MoEFeedForward`: a sparse MoE FFN that drops in as `layer.ffn` of any backbone.

Routing, in order:
  1. flatten the tokens to [n d] and score the experts with the configured router;
  2. pick each token's top k experts (top k/G in each of G groups for expert prototyping);
  3. gate them (unweighted for MoEfication, softmax for trained MoE);
  4. apply the capacity drop rule if a capacity factor is set (gates of dropped
     assignments become 0);
  5. run the selected experts with the configured `MoEImpl` and add the output bias once.

Shape vocabulary: n tokens, d width, e experts, f expert width, k choices.

Example::

    moe = MoEFeedForward(384, 1536, MoEConfig.tiny(), activation="relu", rngs=nnx.Rngs(0))
    y = moe(x)                 # [..., 384] -> [..., 384]
    out = moe.apply(x)         # MoEOutput with the aux losses and the expert load
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from elang_jax.models._common import FeedForward, activation_fn
from elang_jax.moe import _experts, _routing
from elang_jax.moe._config import MoEConfig, MoEImpl, RouterKind


@dataclasses.dataclass(frozen=True)
class MoEOutput:
    """What one MoE FFN call produced.

    Attributes:
      output: [..., d] the FFN output.
      expert_ids: [n k] experts chosen per (flattened) token.
      gates: [n k] their weights after the drop rule (0 = dropped).
      router_logits: [n e] router scores.
      expert_load: [e] fraction of the assignments each expert received (before drops).
      dropped_fraction: [] fraction of assignments dropped by the capacity rule.
      load_balance_loss: [] Switch load-balancing loss (1 when balanced).
      router_z_loss: [] router z-loss.
      aux_loss: [] the two above, weighted as the config says.
    """

    output: Float[Array, "... d"]
    expert_ids: Int[Array, "n k"]
    gates: Float[Array, "n k"]
    router_logits: Float[Array, "n e"]
    expert_load: Float[Array, " e"]
    dropped_fraction: Float[Array, ""]
    load_balance_loss: Float[Array, ""]
    router_z_loss: Float[Array, ""]
    aux_loss: Float[Array, ""]


jax.tree_util.register_dataclass(
    MoEOutput, data_fields=[f.name for f in dataclasses.fields(MoEOutput)], meta_fields=[]
)


class MoEFeedForward(nnx.Module):
    """E experts of d_ff / E neurons each; every token runs k of them.

    Parameters: `w_in` [e d f], `b_in` [e f], `w_out` [e f d], `b_out` [d] (added once, as in
    the dense FFN), and the router's: `router_w1` [d e] and `router_w2` [e e] (MLP),
    `router_w` [d e] (LINEAR); ORACLE and CENTROID routers are functions of the expert weights.

    With `sow_aux=True` every call also sows its weighted aux loss as an `nnx.Intermediate`
    named `moe_aux_loss`, so a training loop can add it (see `moe_aux_loss`).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        config: MoEConfig,
        *,
        activation: str,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        sow_aux: bool = False,
        rngs: nnx.Rngs,
    ):
        if not isinstance(config, MoEConfig):
            raise TypeError(f"config must be a MoEConfig, got {type(config)}")
        if d_model < 1 or d_ff < 1:
            raise ValueError(f"d_model and d_ff must be positive, got {d_model=} {d_ff=}")
        e = config.num_experts
        if d_ff % e:
            raise ValueError(
                f"d_ff must be divisible by num_experts (equal-size experts), got {d_ff=} "
                f"num_experts={e}"
            )
        activation_fn(activation)  # raises on an unknown name
        f = d_ff // e
        init_in = nnx.initializers.lecun_normal(in_axis=1, out_axis=2, batch_axis=(0,))
        # fan-in of the output projection is the whole d_ff, as in the dense FFN
        out_std = 1.0 / np.sqrt(d_ff)
        self.w_in = nnx.Param(init_in(rngs.params(), (e, d_model, f), param_dtype))
        self.w_out = nnx.Param(
            out_std * jax.random.truncated_normal(rngs.params(), -2, 2, (e, f, d_model))
        )
        self.b_in = nnx.Param(jnp.zeros((e, f), param_dtype)) if use_bias else None
        self.b_out = nnx.Param(jnp.zeros((d_model,), param_dtype)) if use_bias else None
        mlp, linear = config.router is RouterKind.MLP, config.router is RouterKind.LINEAR
        init = nnx.initializers.lecun_normal()
        self.router_w1 = nnx.Param(init(rngs.params(), (d_model, e), param_dtype)) if mlp else None
        self.router_w2 = nnx.Param(jnp.eye(e, dtype=param_dtype)) if mlp else None
        # small init: near-uniform routing at the start of training
        self.router_w = (
            nnx.Param(0.02 * jax.random.normal(rngs.params(), (d_model, e), param_dtype))
            if linear
            else None
        )
        self.config = config
        self.activation = str(activation)
        self.d_model, self.d_ff = d_model, d_ff
        self.dtype = dtype
        self.sow_aux = sow_aux

    # -- construction from a dense FFN ---------------------------------------------------

    @classmethod
    def from_dense(
        cls,
        ffn: FeedForward,
        config: MoEConfig,
        partition: np.ndarray | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> MoEFeedForward:
        """Experts made of the dense FFN's neurons; `partition[e]` lists expert e's neurons.

        Args:
          ffn: a non-gated `FeedForward`.
          config: the MoE config (E = `partition.shape[0]`).
          partition: [e f] neuron ids, a permutation of range(d_ff); None: contiguous blocks.
          rngs: initialises the router (MLP: centroids for W1 are set here).
        """
        if not isinstance(ffn, FeedForward):
            raise TypeError(f"ffn must be a FeedForward, got {type(ffn)}")
        if ffn.w_gate is not None:
            raise NotImplementedError(
                "MoEfication of gated FFNs (GLU) is not supported: a neuron's activation "
                "act(g x) * (w x) has no sign to route on"
            )
        w_in = np.asarray(ffn.w_in.kernel[...])  # [d d_ff]
        d, d_ff = w_in.shape
        e = config.num_experts
        if partition is None:
            if d_ff % e:
                raise ValueError(f"d_ff must be divisible by num_experts, {d_ff=} {e=}")
            partition = np.arange(d_ff).reshape(e, d_ff // e)
        partition = np.asarray(partition)
        if partition.ndim != 2 or partition.shape[0] != e:
            raise ValueError(f"partition must have shape [{e}, f], got {partition.shape}")
        if sorted(partition.reshape(-1).tolist()) != list(range(d_ff)):
            raise ValueError(f"partition must be a permutation of range({d_ff}) split in rows")
        use_bias = ffn.w_in.bias is not None
        moe = cls(
            d,
            d_ff,
            config,
            activation=ffn.activation,
            use_bias=use_bias,
            rngs=rngs or nnx.Rngs(0),
        )
        w_out = np.asarray(ffn.w_out.kernel[...])  # [d_ff d]
        # [d d_ff] -> [e d f]
        moe.w_in[...] = jnp.asarray(w_in[:, partition].transpose(1, 0, 2))
        # [d_ff d] -> [e f d]
        moe.w_out[...] = jnp.asarray(w_out[partition])
        if use_bias:
            assert moe.b_in is not None and moe.b_out is not None
            assert ffn.w_in.bias is not None and ffn.w_out.bias is not None
            moe.b_in[...] = jnp.asarray(np.asarray(ffn.w_in.bias[...])[partition])
            moe.b_out[...] = jnp.asarray(ffn.w_out.bias[...])
        if moe.router_w1 is not None:
            moe.router_w1[...] = moe.centroids().T
        return moe

    # -- routing ---------------------------------------------------------------------------

    def weights(self) -> _experts.ExpertWeights:
        dtype = self.dtype or self.w_in[...].dtype
        b_in = self.b_in[...] if self.b_in is not None else jnp.zeros(self.w_in.shape[::2])
        return _experts.ExpertWeights(
            self.w_in[...].astype(dtype), b_in.astype(dtype), self.w_out[...].astype(dtype)
        )

    def centroids(self) -> Float[Array, "e d"]:
        """Mean of each expert's L2-normalised input weight rows, rescaled to unit norm."""
        w = self.w_in[...].astype(jnp.float32)
        w = w / (jnp.linalg.norm(w, axis=1, keepdims=True) + 1e-12)
        c = w.mean(-1)
        return c / (jnp.linalg.norm(c, axis=-1, keepdims=True) + 1e-12)

    def activation_mass(self, x: Float[Array, "n d"]) -> Float[Array, "n e"]:
        """Each expert's positive activation mass sum_i max(act(w_i x + b_i), 0) (dense)."""
        w = self.weights()
        act = activation_fn(self.activation)
        # [n e f]
        h = act(jnp.einsum("nd,edf->nef", x.astype(w.w_in.dtype), w.w_in) + w.b_in[None])
        return jnp.maximum(h, 0).astype(jnp.float32).sum(-1)

    def router_logits(self, x: Float[Array, "n d"]) -> Float[Array, "n e"]:
        kind = self.config.router
        xf = x.astype(jnp.float32)
        if kind is RouterKind.ORACLE:
            return self.activation_mass(x)
        if kind is RouterKind.LINEAR:
            assert self.router_w is not None  # built for a LINEAR router
            return xf @ self.router_w[...].astype(jnp.float32)
        x_hat = xf / (jnp.linalg.norm(xf, axis=-1, keepdims=True) + 1e-12)
        if kind is RouterKind.CENTROID:
            c = self.centroids()
            # negative squared L2 distance between the unit token and the unit centroid
            return 2.0 * x_hat @ c.T - 2.0
        assert self.router_w1 is not None and self.router_w2 is not None  # an MLP router
        w1 = self.router_w1[...].astype(jnp.float32)
        return jnp.tanh(x_hat @ w1) @ self.router_w2[...].astype(jnp.float32)

    # -- forward ---------------------------------------------------------------------------

    def apply(self, x: Float[Array, "... d"]) -> MoEOutput:
        """The FFN output with routing details and aux losses."""
        if x.ndim < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must have shape [..., {self.d_model}], got {x.shape}")
        config = self.config
        lead = x.shape[:-1]
        # [... d] -> [n d]
        xf = x.reshape(-1, self.d_model)
        n, k = xf.shape[0], config.top_k
        logits = self.router_logits(xf)
        expert_ids, gates = _routing.select(logits, config)
        plan = _routing.plan(expert_ids, config.num_experts)
        keep = _routing.keep_mask(plan, n, k, config.capacity(n))
        gates = gates * keep
        w = self.weights()
        act = activation_fn(self.activation)
        y = _experts.run(
            MoEImpl(config.impl), xf.astype(w.w_in.dtype), expert_ids, gates, plan, w, act, config
        )
        if self.b_out is not None:
            # [n d] + [1 d]
            y = y + self.b_out[...].astype(y.dtype)[None, :]
        lb = _routing.load_balance_loss(logits, expert_ids, config.num_experts)
        z = _routing.router_z_loss(logits)
        aux = config.load_balance_weight * lb + config.z_loss_weight * z
        out = MoEOutput(
            output=y.reshape(*lead, self.d_model).astype(x.dtype),
            expert_ids=expert_ids,
            gates=gates,
            router_logits=logits,
            expert_load=plan.group_sizes.astype(jnp.float32) / max(n * k, 1),
            # no tokens: nothing dropped (a mean over none would be NaN)
            dropped_fraction=(
                1.0 - keep.mean(dtype=jnp.float32) if n else jnp.zeros((), jnp.float32)
            ),
            load_balance_loss=lb,
            router_z_loss=z,
            aux_loss=aux,
        )
        if self.sow_aux:
            self.sow(nnx.Intermediate, "moe_aux_loss", aux)
        return out

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        return self.apply(x).output


def moe_aux_loss(model: nnx.Module) -> jax.Array:
    """Pops and sums the aux losses sown by `MoEFeedForward(sow_aux=True)` layers."""
    sown = nnx.pop(model, nnx.Intermediate)
    total = jnp.zeros((), jnp.float32)
    for path, variable in nnx.to_flat_state(sown):
        if "moe_aux_loss" in path:
            # sow keeps a tuple of every value sown since the last pop
            for leaf in jax.tree.leaves(variable.get_value()):
                total = total + jnp.sum(leaf)
    return total
