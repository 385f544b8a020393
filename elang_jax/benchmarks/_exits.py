"""The batched multi-exit step at target mean depths vs the full model.

An exit head after every layer (random, like the backbone); the step packs the examples
still running into the smallest static bucket after each exit. For each target depth the
entropy threshold is chosen offline: every exit's logits on the timed batch, the step's
decisions simulated for a sweep of thresholds (`simulate_exits`), the one whose mean layers
lie closest to the target kept. The depth reported is the step's own.

Shape vocabulary: e exits, b batch rows, c classes.
"""

from __future__ import annotations

import math

import numpy as np
from flax import nnx

from elang_jax.benchmarks._config import BenchConfig
from elang_jax.benchmarks._models import build_classifier, jit_module, logits_fn, random_inputs
from elang_jax.benchmarks._result import BenchResult, make_result
from elang_jax.exits import (
    ExitPolicy,
    MultiExit,
    MultiExitConfig,
    candidate_settings,
    exit_scores,
    simulate_exits,
)
from elang_jax.flops import encoder_layer_flops, head_flops
from elang_jax.timing import time_interleaved

BASELINE = "full_model"
POLICY = ExitPolicy.ENTROPY


def candidate_name(depth: float) -> str:
    return f"exit_mean_{depth:g}_layers"


def threshold_for_depth(logits: np.ndarray, exit_layers: tuple[int, ...], depth: float) -> float:
    """The entropy threshold whose simulated mean exit layer is closest to `depth`.

    Args:
      logits: [e b c] every exit's logits on the batch.
    """
    best, best_gap = math.inf, math.inf
    scores = exit_scores(logits, POLICY)  # once: the sweep only moves the threshold
    for th in candidate_settings(logits, POLICY, num=400):
        layers = simulate_exits(logits, exit_layers, POLICY, th, scores=scores).layers
        gap = abs(float(np.mean(layers)) - depth)
        if gap < best_gap:
            best, best_gap = th, gap
    return best


def bench_exits(config: BenchConfig) -> BenchResult:
    """Times the exit step at each target mean depth against the full model."""
    model = build_classifier(config)
    me = MultiExit(
        model,
        MultiExitConfig(
            pooling="mean", policy=POLICY, bucket_fractions=config.exit_bucket_fractions
        ),
        rngs=nnx.Rngs(config.seed + 2),
    )
    b, t, num_layers = config.batch_size, config.seq_len, config.num_layers
    step = me.exit_step(b)
    inputs = random_inputs(config)
    all_exits = jit_module(
        me, lambda m, x: m(x["input_ids"], x["attention_mask"], x["token_type_ids"]).logits
    )
    logits = np.asarray(all_exits(inputs))

    layer_flops = encoder_layer_flops(model.config, t)
    # Every exit an example passes runs a pooler and a classifier (the last is the model's).
    head = head_flops(model.config.hidden_size, model.config.num_labels)
    full_flops = b * (num_layers * layer_flops + head)

    full = logits_fn(model)
    candidates = {BASELINE: lambda: full(inputs), "exit_step_never_early": lambda: step(inputs)}
    thresholds = {"exit_step_never_early": math.inf}
    for depth in config.exit_depths:
        thresholds[candidate_name(depth)] = threshold_for_depth(logits, me.exit_layers, depth)
    flop_speedups, info = {}, {}
    for name, th in thresholds.items():
        layers = np.asarray(step(inputs, threshold=th).layers)
        candidates[name] = lambda th=th: step(inputs, threshold=th)
        flop_speedups[name] = full_flops / float(np.sum(layers * (layer_flops + head)))
        info[name] = dict(mean_layers=float(np.mean(layers)), threshold=th)
    for depth in config.exit_depths:
        info[candidate_name(depth)]["target_layers"] = depth
    timings = time_interleaved(candidates, config.rounds)
    args = dict(
        batch_size=b,
        seq_len=t,
        num_layers=num_layers,
        policy=POLICY,
        exit_depths=list(config.exit_depths),
        bucket_fractions=list(config.exit_bucket_fractions),
        rounds=config.rounds,
    )
    notes = (
        "flop_speedup: full-model FLOPs over each example's layers and exit heads run, "
        "without bucket rounding",
    )
    return make_result(
        "exits", timings, BASELINE, args, flop_speedups=flop_speedups, info=info, notes=notes
    )
