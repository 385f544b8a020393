"""The demo's cascade rows: Swift -> Super on Swift's confidence score (E-LANG, TangoBERT).

Shape vocabulary: v valid rows of a batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from elang_jax import flops, routing
from elang_jax.cascade import Cascade, Tier, TierConfig, calibrate_two_tier
from elang_jax.demo._config import DemoConfig
from elang_jax.demo._method import (
    Calibration,
    Method,
    RowStats,
    even_fractions,
    fit_fractions,
    padded_length,
    summarize,
)
from elang_jax.models import BertForSequenceClassification
from elang_jax.routing import Score
from elang_jax.timing import batch_inputs


def cascade(
    name: str,
    score: str,
    swift: BertForSequenceClassification,
    super_: BertForSequenceClassification,
    calib: Calibration,
    config: DemoConfig,
    known: dict[str, Any] | None = None,
) -> Method:
    """A Swift -> Super cascade on Swift's `score` (E-LANG: "energy"; TangoBERT:
    "max_prob"), its threshold calibrated on Swift's and Super's calibration logits, the
    escalated rows' buckets fitted to where that threshold routes them there
    (`cascade.fit_buckets`)."""
    if known is None:
        lengths = calib.encoded.lengths
        ratio = np.array(
            [
                flops.classifier_flops(swift.config, int(t))
                / flops.classifier_flops(super_.config, int(t))
                for t in lengths
            ]
        )
        op = calibrate_two_tier(
            calib.swift_logits,
            calib.super_logits,
            calib.labels,
            score,
            calib.target,
            swift_cost=ratio,
        )
        threshold = float(op.setting[0])
        known = summarize(op, {"score": score, "threshold": threshold}, config.calibration.epsilon)
        fractions = even_fractions(config.cascade.buckets)
        if config.cascade.fit_buckets:
            escalated = np.asarray(routing.score(score, calib.swift_logits)) < threshold
            fractions = fit_fractions(
                escalated,
                calib.batches,
                config.eval.batch_size,
                config.cascade.buckets,
                lambda t: [flops.classifier_flops(super_.config, t)],
                given=fractions,
            )
        known["bucket_fractions"] = list(fractions)
    threshold = float(known["setting"]["threshold"])
    built = Cascade(
        [
            Tier(swift, TierConfig(name="swift", score=Score(score), threshold=threshold)),
            Tier(super_, TierConfig(name="super")),
        ],
        bucket_fractions=tuple(known["bucket_fractions"]),
    )
    step = built.serving_step(config.eval.batch_size)

    def forward(batch):
        return step(batch_inputs(batch), valid=batch.valid)

    def decode(batch, out):
        v = batch.valid
        t = padded_length(batch)
        tier = np.asarray(out.tier)[v]
        cost = flops.classifier_flops(swift.config, t) + (tier == 1) * float(
            flops.classifier_flops(super_.config, t)
        )
        return RowStats(
            predictions=np.asarray(out.predictions)[v],
            flops=np.asarray(cost, float),
            skipped={"inputs": (tier == 0).astype(float)},
        )

    return Method(
        name=name,
        kind="cascade",
        forward=forward,
        decode=decode,
        calibration=known,
    )
