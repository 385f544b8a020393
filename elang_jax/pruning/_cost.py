"""Analytic cost model of a keep schedule, and offline tuning of the speed knob.

The FLOPs are `elang_jax.flops`'s (multiply-add = 2 FLOPs): per layer with n tokens
entering and s = n keys (plus the cache slots for GPT-2 prefill), `flops.layer_flops`
(projections 4 n d i + 4 s d i, attention 4 n s i, FFN 4 n d f or 6 n d f gated), plus
`flops.acc_score_flops` (2 h n s) in the layers followed by a selection. This module only
adds what pruning decides: how many tokens each layer sees. The predicted speed-up of a
schedule is (unpruned FLOPs) / (pruned FLOPs) summed over the sequences of a workload, each
at its padded bucket length. Gathers, top-k and element-wise work are left out; the
benchmark's measured/predicted ratio shows what they cost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from elang_jax import flops
from elang_jax.pruning._schedule import AccConfig, KeepSchedule


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerDims:
    """What the cost model needs to know about a backbone's layers."""

    d_model: int
    inner: int
    d_ff: int
    num_heads: int
    num_layers: int
    gated: bool = False

    @classmethod
    def of(cls, config) -> LayerDims:
        """From a `BertConfig`, `GPT2Config` or `T5Config` (the T5 encoder)."""
        name = type(config).__name__
        if name == "BertConfig":
            return cls(
                d_model=config.hidden_size,
                inner=config.hidden_size,
                d_ff=config.intermediate_size,
                num_heads=config.num_heads,
                num_layers=config.num_layers,
            )
        if name == "GPT2Config":
            return cls(
                d_model=config.n_embd,
                inner=config.n_embd,
                d_ff=config.d_ff,
                num_heads=config.n_head,
                num_layers=config.n_layer,
            )
        if name == "T5Config":
            return cls(
                d_model=config.d_model,
                inner=config.num_heads * config.d_kv,
                d_ff=config.d_ff,
                num_heads=config.num_heads,
                num_layers=config.num_layers,
                gated=config.is_gated,
            )
        raise ValueError(f"no layer dimensions for a {name}; give a LayerDims")


def stack_flops(dims: LayerDims, counts: tuple[int, ...], extra_keys: int = 0) -> int:
    """FLOPs of the layer stack on one sequence whose layers see `counts` tokens.

    Args:
      counts: tokens entering each layer (a schedule's `counts(t)`; `(t,) * l` is unpruned).
      extra_keys: key slots each layer attends to beyond its tokens (GPT-2 prefill attends
        over a cache with room for the generated tokens).
    """
    if len(counts) != dims.num_layers:
        raise ValueError(f"{len(counts)} counts for {dims.num_layers} layers")
    total = 0
    for layer, n in enumerate(counts):
        keys = n + extra_keys
        total += flops.layer_flops(n, keys, dims.d_model, dims.inner, dims.d_ff, dims.gated)
        if layer + 1 < len(counts) and counts[layer + 1] < n:
            total += flops.acc_score_flops(dims.num_heads, n, keys)
    return total


def predicted_speedup(
    dims: LayerDims,
    schedule: KeepSchedule,
    workload: Mapping[int, int],
    *,
    extra_keys: int = 0,
    fixed_flops: int = 0,
) -> float:
    """Unpruned over pruned FLOPs for a workload.

    Args:
      workload: {padded length: number of sequences} (e.g. batches x batch size per bucket).
      extra_keys: see `stack_flops`.
      fixed_flops: per-sequence work pruning does not touch (a classifier head, an LM head).
    """
    if not workload:
        raise ValueError("workload is empty")
    full = pruned = 0
    for length, count in workload.items():
        full += count * (stack_flops(dims, (length,) * dims.num_layers, extra_keys) + fixed_flops)
        pruned += count * (stack_flops(dims, schedule.counts(length), extra_keys) + fixed_flops)
    return full / pruned


def tune_schedule(
    target_speedup: float,
    dims: LayerDims,
    workload: Mapping[int, int],
    config: AccConfig | None = None,
    *,
    extra_keys: int = 0,
    fixed_flops: int = 0,
    tolerance: float = 1e-4,
) -> KeepSchedule:
    """Offline tuning: the mildest schedule (largest rate) predicted to reach the target.

    No data and no retraining: a bisection on the speed knob against `predicted_speedup`,
    which does not increase with the rate. Raises if even the smallest rate falls short
    (the floor `min_tokens` and the unpruned first layers cap the speed-up).
    """
    if target_speedup < 1.0:
        raise ValueError(f"target_speedup must be >= 1, got {target_speedup=}")
    config = config or AccConfig()

    def speedup(rate: float) -> float:
        schedule = KeepSchedule.from_speed(rate, dims.num_layers, config)
        return predicted_speedup(
            dims, schedule, workload, extra_keys=extra_keys, fixed_flops=fixed_flops
        )

    if target_speedup == 1.0:
        return KeepSchedule.from_speed(1.0, dims.num_layers, config)
    lo, hi = tolerance, 1.0  # speedup(lo) >= target > speedup(hi) is the invariant
    best = speedup(lo)
    if best < target_speedup:
        raise ValueError(
            f"target speed-up {target_speedup:.3f} is out of reach: the most aggressive "
            f"schedule gives {best:.3f} (lower min_tokens or first_pruned_layer)"
        )
    while hi - lo > tolerance:
        mid = 0.5 * (lo + hi)
        if speedup(mid) >= target_speedup:
            lo = mid
        else:
            hi = mid
    return KeepSchedule.from_speed(lo, dims.num_layers, config)
