"""The demo's methods, each calibrated on the calibration split and run batched under jit.

A `Method` is a compiled batched forward (`forward`, the part that is timed) and a host-side
`decode` that turns its output into per-example predictions, analytic FLOPs at the batch's
padded length, and the share of work skipped. Every method is calibrated for the same
target: accuracy at most `DemoConfig.calibration.epsilon` below Super's on the calibration
split, with the library's `elang_jax.calibration.calibrate` (through each method's own
wrapper).

This module gathers them; each family lives in its own module:

- `_method`: `Method`, `RowStats`, `Calibration`, shared helpers and the reference rows;
- `_method_cascade`: Swift -> Super cascades;
- `_method_exits`: the multi-exit model and its row;
- `_method_acc`: ACC token pruning;
- `_method_moe`: MoEfication;
- `_method_composed`: exits and ACC composed;
- `_evaluate`: running a method over a dataset.
"""

from __future__ import annotations

from elang_jax.demo._evaluate import Evaluation, evaluate
from elang_jax.demo._method import (
    Calibration,
    Method,
    RowStats,
    dataset_outputs,
    make_batches,
    reference,
)
from elang_jax.demo._method_acc import token_pruning
from elang_jax.demo._method_cascade import cascade
from elang_jax.demo._method_composed import composed_exits_acc
from elang_jax.demo._method_exits import exit_model, multi_exit
from elang_jax.demo._method_moe import moe_classifier_flops, moefied

__all__ = [
    "Calibration",
    "Evaluation",
    "Method",
    "RowStats",
    "cascade",
    "composed_exits_acc",
    "dataset_outputs",
    "evaluate",
    "exit_model",
    "make_batches",
    "moe_classifier_flops",
    "moefied",
    "multi_exit",
    "reference",
    "token_pruning",
]
