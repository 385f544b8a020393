"""The demo's token-pruning row: Super with ACC token pruning, zero-shot.

Shape vocabulary: v valid rows of a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from elang_jax import pruning
from elang_jax.demo._config import DemoConfig
from elang_jax.demo._method import (
    Calibration,
    Method,
    RowStats,
    head_flops,
    padded_length,
    summarize,
)
from elang_jax.models import BertForSequenceClassification
from elang_jax.timing import batch_inputs


def token_pruning(
    super_: BertForSequenceClassification,
    calib: Calibration,
    config: DemoConfig,
    progress: Callable[[int], Any] | None = None,
    known: dict[str, Any] | None = None,
) -> Method:
    """Super with ACC token pruning, zero-shot (no fine-tuning with elimination): the keep
    schedule is the cheapest of `config.pruning.acc_targets`' candidates meeting the target."""
    acc = pruning.AccConfig.bert(variant=config.pruning.acc_variant)
    if known is None:
        schedule, op = pruning.calibrate_schedule(
            super_,
            calib.batches,
            calib.labels,
            config.pruning.acc_targets,
            acc,
            calib.target,
            reference_predictions=calib.super_logits.argmax(-1),
            progress=progress,
        )
        known = summarize(
            op, {"variant": str(acc.variant), "rate": schedule.rate}, config.calibration.epsilon
        )
    schedule = pruning.KeepSchedule.from_speed(
        known["setting"]["rate"], super_.config.num_layers, acc
    )
    graphdef, state = nnx.split(super_)
    static = schedule if schedule.prunes else None
    cfg = super_.config
    dims = pruning.LayerDims.of(cfg)
    head = head_flops(cfg)

    def forward(batch):
        return pruning.acc_logits(graphdef, state, static, batch_inputs(batch))

    def decode(batch, logits):
        v = batch.valid
        t = padded_length(batch)
        counts = schedule.counts(t)
        m = int(v.sum())
        return RowStats(
            predictions=np.asarray(logits).argmax(-1)[v],
            flops=np.full(m, float(pruning.stack_flops(dims, counts) + head)),
            skipped={"tokens": np.full(m, 1.0 - sum(counts) / (len(counts) * t))},
        )

    return Method(
        name=f"ACC token pruning ({str(acc.variant)})",
        kind="pruning",
        forward=forward,
        decode=decode,
        calibration=known,
    )
