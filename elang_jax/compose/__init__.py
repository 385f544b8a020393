"""Composed systems: cascade tiers, early exit, MoE FFNs and ACC token pruning through one
configuration, run as one jitted step.

Typical use (a MoEfied, token-pruned Super model that exits early, behind an E-LANG router
whose Swift model exits early)::

    from elang_jax import compose
    from elang_jax.moe import MoEConfig

    config = compose.ComposedConfig.elang_full(
        threshold=1.0, swift_exit_threshold=-0.2, super_exit_threshold=-0.4,
        acc_rate=0.8, moe=MoEConfig(num_experts=8, top_k=2),
    )
    system = compose.ComposedClassifier([swift_multi_exit, super_multi_exit], config)
    out = system.serving_step(64)(inputs, valid=valid)
    out.predictions, out.tier, out.layers
"""

from elang_jax.compose._calibrate import (
    CandidateGrid,
    ComposedPoint,
    TierOutcomes,
    calibrate_composed,
    candidate_grid,
    executed_flops,
    pareto_front,
    replay_exit_index,
    tier_outcomes,
)
from elang_jax.compose._config import ComposedConfig, ComposedTierConfig, Packing
from elang_jax.compose._executed import ExecutedCost
from elang_jax.compose._fit_buckets import fit_composed_buckets
from elang_jax.compose._system import ComposedClassifier, ComposedOutput

__all__ = [
    "CandidateGrid",
    "TierOutcomes",
    "candidate_grid",
    "pareto_front",
    "ComposedClassifier",
    "ComposedConfig",
    "ComposedOutput",
    "ComposedPoint",
    "ComposedTierConfig",
    "ExecutedCost",
    "Packing",
    "calibrate_composed",
    "executed_flops",
    "fit_composed_buckets",
    "replay_exit_index",
    "tier_outcomes",
]
