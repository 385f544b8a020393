"""A composed system (early exit and ACC token pruning in one step) vs the full model.

The same random multi-exit backbone as the exits benchmark. For each target mean depth the
composed step runs with ACC's keep schedule for the first of `acc_speedups` (tuned offline
for this batch) and an entropy threshold chosen offline as the exits benchmark does, but on
the pruned model's exit logits; the exit step alone at the same depth and the pruned model
alone are timed beside it, so the table shows what composing adds over either method.

Shape vocabulary: e exits, b batch rows, c classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from elang_jax.benchmarks._config import BenchConfig
from elang_jax.benchmarks._exits import threshold_for_depth
from elang_jax.benchmarks._models import build_classifier, logits_fn, random_inputs
from elang_jax.benchmarks._result import BenchResult, make_result
from elang_jax.compose import ComposedClassifier, ComposedConfig
from elang_jax.exits import MultiExit, MultiExitConfig
from elang_jax.flops import classifier_flops
from elang_jax.pruning import AccConfig, LayerDims, classifier_head_flops, tune_schedule
from elang_jax.timing import time_interleaved

BASELINE = "full_model"


def bench_compose(config: BenchConfig) -> BenchResult:
    """Times exits + ACC composed at each target depth against the full model."""
    model = build_classifier(config)
    me = MultiExit(model, MultiExitConfig(pooling="mean"), rngs=nnx.Rngs(config.seed + 2))
    b, t = config.batch_size, config.seq_len
    inputs = random_inputs(config)
    target = config.acc_speedups[0]
    schedule = tune_schedule(
        target,
        LayerDims.of(model.config),
        {t: b},
        AccConfig.bert(),
        fixed_flops=classifier_head_flops(model.config),
    )
    full_flops = b * classifier_flops(model.config, t)
    fractions = config.exit_bucket_fractions

    def system(rate: float | None, threshold: float) -> ComposedClassifier:
        composed = ComposedConfig.exits_acc(threshold, rate or 1.0, exit_buckets=fractions)
        return ComposedClassifier([me], composed)

    full = logits_fn(model)
    candidates: dict[str, Callable[[], Any]] = {BASELINE: lambda: full(inputs)}
    flop_speedups, info = {}, {}

    def add(name, built: ComposedClassifier, depth: float | None):
        step = built.serving_step(b)
        out = step(inputs)
        candidates[name] = lambda: step(inputs)
        flop_speedups[name] = full_flops / float(built.example_flops(out, t).sum())
        tier = built.config.tiers[0]
        info[name] = dict(
            mean_layers=float(np.mean(np.asarray(out.layers)[:, 0])),
            threshold=tier.exit_threshold,
            acc_rate=tier.acc_rate,
            **({} if depth is None else {"target_layers": depth}),
        )

    add(f"acc_{target:g}x_alone", system(schedule.rate, np.inf), None)
    pruned = system(schedule.rate, np.inf)
    pruned_logits = np.asarray(pruned.exit_logits(0, inputs))
    plain_logits = np.asarray(system(None, np.inf).exit_logits(0, inputs))
    for depth in config.exit_depths:
        th = threshold_for_depth(plain_logits, me.exit_layers, depth)
        add(f"exits_{depth:g}_layers_alone", system(None, th), depth)
        th = threshold_for_depth(pruned_logits, me.exit_layers, depth)
        add(f"exits_{depth:g}_layers+acc_{target:g}x", system(schedule.rate, th), depth)
    timings = time_interleaved(candidates, config.rounds)
    args = dict(
        batch_size=b,
        seq_len=t,
        num_layers=config.num_layers,
        exit_depths=list(config.exit_depths),
        acc_target=target,
        acc_rate=schedule.rate,
        bucket_fractions=list(fractions),
        rounds=config.rounds,
    )
    notes = (
        "flop_speedup: full-model FLOPs over the composed system's analytic FLOPs "
        "(ComposedClassifier.example_flops: tokens kept per layer, layers run, exit heads)",
    )
    return make_result(
        "compose", timings, BASELINE, args, flop_speedups=flop_speedups, info=info, notes=notes
    )
