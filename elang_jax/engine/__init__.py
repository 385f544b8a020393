"""The step engine: compiled serving steps (one device or data-parallel over a mesh), the
cascade tier loop, escalated rows rebalanced across data shards, argument checks, and the
process's headroom for more compiled programs (memory maps)."""

from elang_jax.engine._cascade import TierFn, TierResult, cascade_loop
from elang_jax.engine._data_parallel import DATA_AXIS, DataParallel, active_layout
from elang_jax.engine._inputs import (
    per_tier,
    per_tier_lengths,
    step_count,
    step_threshold,
    step_thresholds,
    step_valid,
)
from elang_jax.engine._maps import check_memory_maps, memory_maps
from elang_jax.engine._rebalance import balanced_apply, escalate_apply, exchange_capacity
from elang_jax.engine._step import CompiledStep, StepEngine, StepProgram

__all__ = [
    "DATA_AXIS",
    "CompiledStep",
    "DataParallel",
    "StepEngine",
    "StepProgram",
    "TierFn",
    "TierResult",
    "active_layout",
    "balanced_apply",
    "cascade_loop",
    "check_memory_maps",
    "escalate_apply",
    "exchange_capacity",
    "memory_maps",
    "per_tier",
    "per_tier_lengths",
    "step_count",
    "step_threshold",
    "step_thresholds",
    "step_valid",
]
