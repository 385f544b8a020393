"""A Swift/Super cascade's compiled serving step vs Super alone.

Swift (`swift_layers` layers) answers every input; Super (`num_layers`) runs only on the
bucket of inputs whose Swift energy score falls below the threshold. The threshold for each
target share is read off the scores of the timed batch itself (the step's own Swift scores,
so that no float rounding between two programs moves an input across it), so the escalated
share is the one asked for. Timed: the serving step as a server calls it (input checks
included) against Super's jitted forward, and Swift alone as the floor.

Shape vocabulary: b batch rows, t padded length.
"""

from __future__ import annotations

import math

import numpy as np

from elang_jax.benchmarks._config import BenchConfig
from elang_jax.benchmarks._models import build_classifier, logits_fn, random_inputs
from elang_jax.benchmarks._result import BenchResult, make_result
from elang_jax.cascade import Cascade, Tier, TierConfig
from elang_jax.flops import classifier_flops
from elang_jax.routing import Score
from elang_jax.timing import time_interleaved

BASELINE = "super_alone"
SCORE = Score.ENERGY


def candidate_name(fraction: float) -> str:
    return f"cascade_{100 * fraction:g}%_to_super"


def escalation_threshold(scores: np.ndarray, count: int) -> float:
    """A threshold sending exactly the `count` lowest-scoring inputs on (score < threshold
    escalates), midway between the last one sent and the first one kept; exact unless
    scores tie there."""
    s = np.sort(np.asarray(scores, np.float64))
    if count <= 0:
        return -math.inf
    if count >= len(s):
        return math.inf
    return float((s[count - 1] + s[count]) / 2)


def bench_cascade(config: BenchConfig) -> BenchResult:
    """Times the cascade step at each escalated share against Super alone."""
    super_ = build_classifier(config, seed=0)
    swift = build_classifier(config, config.swift_layers, seed=1)
    cascade = Cascade(
        [
            Tier(swift, TierConfig(name="swift", score=SCORE)),
            Tier(super_, TierConfig(name="super")),
        ]
    )
    b, t = config.batch_size, config.seq_len
    step = cascade.serving_step(b)
    inputs = random_inputs(config)
    everything = step(inputs, thresholds=[math.inf])
    swift_scores = np.asarray(everything.scores[:, 0])

    super_flops = classifier_flops(super_.config, t)
    swift_flops = classifier_flops(swift.config, t)
    super_fn, swift_fn = logits_fn(super_), logits_fn(swift)
    candidates = {
        BASELINE: lambda: super_fn(inputs),
        "swift_alone": lambda: swift_fn(inputs),
    }
    flop_speedups = {"swift_alone": super_flops / swift_flops}
    info = {}
    for f in config.escalate_fractions:
        threshold = escalation_threshold(swift_scores, round(f * b))
        escalated = float(np.mean(np.asarray(step(inputs, thresholds=[threshold]).tier) == 1))
        name = candidate_name(f)
        candidates[name] = lambda th=threshold: step(inputs, thresholds=[th])
        flop_speedups[name] = super_flops / (swift_flops + escalated * super_flops)
        bucket = min(n for n in step.buckets if n >= round(escalated * b))
        info[name] = dict(target=f, escalated=escalated, bucket=bucket, threshold=threshold)
    timings = time_interleaved(candidates, config.rounds)
    args = dict(
        batch_size=b,
        seq_len=t,
        swift_layers=config.swift_layers,
        super_layers=config.num_layers,
        score=SCORE,
        escalate_fractions=list(config.escalate_fractions),
        buckets=list(step.buckets),
        rounds=config.rounds,
    )
    notes = (
        "flop_speedup: Super FLOPs over Swift's plus the escalated share of Super's, "
        "without bucket rounding",
    )
    return make_result(
        "cascade", timings, BASELINE, args, flop_speedups=flop_speedups, info=info, notes=notes
    )
