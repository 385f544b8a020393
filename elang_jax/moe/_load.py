"""Expert load of a MoEfied model: how each layer's assignments spread over its experts.

The load explains the speed: dropless CAPACITY sizes every expert by the busiest one, so
its work is `max_over_mean` times the active rows; TILED runs each expert on its own rows,
so its work stays within 1.25x of the active rows whatever the load. A layer whose busiest
expert takes several times its share is where the two differ.

Shape vocabulary: N tokens, d width, e experts, k choices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Float

from elang_jax.moe._layer import MoEFeedForward
from elang_jax.moe._moefy import collect_ffn_inputs, ffn_sites
from elang_jax.moe._routing import select

# Tokens routed per call: bounds the router's memory (the ORACLE router is a dense FFN).
_CHUNK = 4096


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExpertLoad:
    """One MoE layer's expert load on a set of tokens.

    Attributes:
      layer: the layer's index among the model's FFN sites (`ffn_sites`).
      num_experts: E.
      top_k: k, assignments per token.
      tokens: tokens routed.
      shares: each expert's share of the N * k assignments (they sum to 1).
      busiest_share: the largest share.
      mean_share: 1 / E, every expert's share under perfect balance.
      max_over_mean: busiest_share / mean_share (1: balanced; E / k: every token's
        choices on the same experts). Dropless CAPACITY's work over the active rows.
    """

    layer: int
    num_experts: int
    top_k: int
    tokens: int
    shares: tuple[float, ...]
    busiest_share: float
    mean_share: float
    max_over_mean: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _counts(moe: MoEFeedForward, x: Float[np.ndarray, "N d"]) -> np.ndarray:
    graphdef, state = nnx.split(moe)

    @jax.jit
    def count(state, x):
        layer = nnx.merge(graphdef, state)
        ids, _ = select(layer.router_logits(x), layer.config)
        return jnp.bincount(ids.reshape(-1), length=layer.config.num_experts)

    total = np.zeros(moe.config.num_experts, np.int64)
    for start in range(0, x.shape[0], _CHUNK):
        chunk = jnp.asarray(x[start : start + _CHUNK], moe.w_in[...].dtype)
        total += np.asarray(count(state, chunk))
    return total


def expert_load(
    model: nnx.Module,
    batches: Iterable[Any] | None = None,
    *,
    ffn_inputs: Sequence[Float[np.ndarray, "N d"]] | None = None,
) -> list[ExpertLoad]:
    """Each MoE layer's expert load on real inputs (busiest expert's share, mean share).

    Args:
      model: a model with MoE FFNs (`moefy`); dense FFN sites are skipped.
      batches: `elang_jax.data.Batch`es run through the model to get each FFN's inputs
        (padding removed), as `collect_ffn_inputs` does.
      ffn_inputs: instead of `batches`, one [N d] array per FFN site, in layer order.

    Returns:
      One `ExpertLoad` per MoE layer, in layer order.
    """
    if (batches is None) == (ffn_inputs is None):
        raise ValueError("pass exactly one of batches and ffn_inputs")
    sites = ffn_sites(model)
    if ffn_inputs is None:
        assert batches is not None  # checked above
        ffn_inputs = collect_ffn_inputs(model, batches)
    if len(ffn_inputs) != len(sites):
        raise ValueError(f"ffn_inputs has {len(ffn_inputs)} arrays for {len(sites)} FFN sites")
    loads = []
    for i, (site, x) in enumerate(zip(sites, ffn_inputs, strict=True)):
        moe = site.ffn
        if not isinstance(moe, MoEFeedForward):
            continue
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != moe.d_model or x.shape[0] == 0:
            raise ValueError(
                f"ffn_inputs[{i}] must be a non-empty [N {moe.d_model}], got {x.shape}"
            )
        counts = _counts(moe, x)
        shares = counts / counts.sum()
        e = moe.config.num_experts
        loads.append(
            ExpertLoad(
                layer=i,
                num_experts=e,
                top_k=moe.config.top_k,
                tokens=int(x.shape[0]),
                shares=tuple(float(s) for s in shares),
                busiest_share=float(shares.max()),
                mean_share=1.0 / e,
                max_over_mean=float(shares.max() * e),
            )
        )
    if not loads:
        raise ValueError(f"{type(model).__name__} has no MoE FFN (MoEfy it first)")
    return loads


def format_expert_load(loads: Sequence[ExpertLoad]) -> str:
    """A plain-text table, one line per layer."""
    lines = ["layer  experts  top_k  tokens  busiest share  mean share  busiest / mean"]
    for load in loads:
        lines.append(
            f"{load.layer:>5}  {load.num_experts:>7}  {load.top_k:>5}  {load.tokens:>6}  "
            f"{load.busiest_share:>13.3f}  {load.mean_share:>10.3f}  {load.max_over_mean:>14.2f}"
        )
    return "\n".join(lines)
