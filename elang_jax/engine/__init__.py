"""The step engine: compiled serving steps, the cascade tier loop, argument checks."""

from elang_jax.engine._cascade import TierFn, TierResult, cascade_loop
from elang_jax.engine._inputs import step_count, step_threshold, step_thresholds, step_valid
from elang_jax.engine._step import CompiledStep, StepEngine, StepProgram

__all__ = [
    "CompiledStep",
    "StepEngine",
    "StepProgram",
    "TierFn",
    "TierResult",
    "cascade_loop",
    "step_count",
    "step_threshold",
    "step_thresholds",
    "step_valid",
]
