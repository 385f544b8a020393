"""Threshold calibration shared by every method."""

from elang_jax.calibration._calibrate import (
    CalibrationTarget,
    Objective,
    OperatingPoint,
    calibrate,
    clopper_pearson_upper,
    fit_temperature,
    threshold_candidates,
)

__all__ = [
    "CalibrationTarget",
    "Objective",
    "OperatingPoint",
    "calibrate",
    "clopper_pearson_upper",
    "fit_temperature",
    "threshold_candidates",
]
