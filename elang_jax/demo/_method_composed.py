"""The demo's composed row: Super exiting early and pruning tokens at once
(`elang_jax.compose`), the exit threshold and the keep schedule calibrated jointly.

Shape vocabulary: v valid rows of a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from elang_jax import compose, exits, flops, pruning
from elang_jax.demo._config import DemoConfig
from elang_jax.demo._method import (
    Calibration,
    Method,
    RowStats,
    even_fractions,
    head_flops,
    padded_length,
    summarize,
)
from elang_jax.timing import batch_inputs


def composed_exits_acc(
    me: exits.MultiExit,
    calib: Calibration,
    config: DemoConfig,
    progress: Callable[[str], None] = lambda _: None,
    known: dict[str, Any] | None = None,
    tick: Callable[[int], Any] | None = None,
) -> Method:
    """Super exiting early and pruning tokens at once (`elang_jax.compose`): the exit
    threshold and the keep schedule calibrated jointly. Each candidate schedule (one per
    `compose.acc_targets`, as ACC's) costs one pass over the calibration split with every
    exit's logits (`tick` is called with 1 after each batch); the thresholds are then
    replayed offline, and the exit buckets fitted to the rows they run there
    (`exits.fit_buckets`, `compose.fit_composed_buckets`)."""
    super_ = me.model
    cfg = super_.config
    acc = pruning.AccConfig.bert(variant=config.pruning.acc_variant)

    def system(
        rate: float,
        threshold: float = np.inf,
        fractions: Sequence[float] = even_fractions(config.exits.exit_buckets),
    ) -> compose.ComposedClassifier:
        tier = compose.ComposedTierConfig.make(
            "super",
            exit_policy=exits.ExitPolicy.ENTROPY,
            exit_threshold=threshold,
            exit_buckets=tuple(fractions),
            acc_rate=rate,
            acc=acc,
        )
        return compose.ComposedClassifier([me], compose.ComposedConfig(tiers=(tier,)))

    if known is None:
        dims = pruning.LayerDims.of(cfg)
        schedules = pruning.schedule_candidates(
            config.compose.acc_targets,
            dims,
            pruning.batch_workload(calib.batches),
            acc,
            fixed_flops=head_flops(cfg),
        )
        # The unpruned schedule is the multi-exit row's; keep it only if nothing else fits.
        schedules = schedules[1:] or schedules
        grids, outcomes = [], []
        for s in schedules:
            progress(f"keep schedule {s.rate:.3f}: every exit on the calibration split")
            sys_ = system(s.rate)
            outcome = compose.tier_outcomes(sys_, 0, calib.batches, len(calib.labels), tick)
            grids.append(compose.candidate_grid(sys_, [outcome], num=config.compose.grid))
            outcomes.append(outcome)
        lengths = outcome.lengths
        reference_flops = float(sum(flops.classifier_flops(cfg, int(t)) for t in lengths))
        chosen = compose.calibrate_composed(
            grids,
            calib.labels,
            calib.super_logits.argmax(-1) == calib.labels,
            reference_flops,
            calib.target,
        )
        tier = chosen.config.tiers[0]
        setting = {
            "policy": "entropy",
            "threshold": float(tier.exit_threshold),
            "variant": str(acc.variant),
            "rate": float(tier.acc_rate or 1.0),
        }
        known = summarize(chosen.point, setting, config.calibration.epsilon)
        fitted = chosen.config
        if config.exits.fit_buckets:
            fitted = compose.fit_composed_buckets(
                compose.ComposedClassifier([me], chosen.config), [outcomes[chosen.grid]]
            )
        known["bucket_fractions"] = list(fitted.tiers[0].exit_buckets)
    setting = known["setting"]
    built = system(float(setting["rate"]), float(setting["threshold"]), known["bucket_fractions"])
    step = built.serving_step(config.eval.batch_size)
    schedule = pruning.KeepSchedule.from_speed(float(setting["rate"]), cfg.num_layers, acc)
    num_layers = cfg.num_layers
    last = me.num_exits - 1

    def forward(batch):
        return step(batch_inputs(batch), valid=batch.valid)

    def decode(batch, out):
        v = batch.valid
        t = padded_length(batch)
        layers = np.asarray(out.layers)[v, 0]
        kept = np.cumsum((0, *schedule.counts(t)))  # token-layer slots of the first l layers
        return RowStats(
            predictions=np.asarray(out.predictions)[v],
            flops=built.example_flops(out, t)[v],
            skipped={
                "inputs": (np.asarray(out.exit_index)[v, 0] < last).astype(float),
                "layers": 1.0 - layers / num_layers,
                "tokens": 1.0 - kept[layers] / (np.maximum(layers, 1) * t),
            },
        )

    return Method(
        name="Composed: exits + ACC",
        kind="composed",
        forward=forward,
        decode=decode,
        calibration=known,
    )
