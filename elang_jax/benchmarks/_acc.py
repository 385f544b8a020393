"""ACC token pruning at keep schedules predicted to give given FLOP speed-ups vs unpruned.

Each schedule comes from `tune_schedule`: the analytic cost model of the pruning package,
with the timed batch as its workload, turns a target speed-up into the mildest speed knob
that reaches it; no data is needed. Token counts per layer are static, so each schedule
compiles one program whose cost does not depend on the weights; which tokens go does, and
random weights choose them as a trained model would choose its own.

Shape vocabulary: b batch rows, t padded length, c classes.
"""

from __future__ import annotations

from elang_jax.benchmarks._config import BenchConfig
from elang_jax.benchmarks._models import build_classifier, jit_module, logits_fn, random_inputs
from elang_jax.benchmarks._result import BenchResult, make_result
from elang_jax.flops import head_flops
from elang_jax.pruning import (
    AccConfig,
    KeepSchedule,
    LayerDims,
    acc_classify,
    predicted_speedup,
    tune_schedule,
)
from elang_jax.timing import time_interleaved

BASELINE = "unpruned"


def candidate_name(target: float) -> str:
    return f"acc_{target:g}x"


def bench_acc(config: BenchConfig) -> BenchResult:
    """Times the pruned classifier at each target speed-up against the unpruned one."""
    model = build_classifier(config)
    b, t = config.batch_size, config.seq_len
    inputs = random_inputs(config)
    dims = LayerDims.of(model.config)
    acc_config = AccConfig.bert()
    workload = {t: b}
    # The pooler and the classifier: pruning leaves them alone.
    head = head_flops(model.config.hidden_size, model.config.num_labels)

    full = logits_fn(model)
    candidates = {BASELINE: lambda: full(inputs)}
    flop_speedups, info, notes = {}, {}, []
    for target in config.acc_speedups:
        name = candidate_name(target)
        try:
            schedule = tune_schedule(target, dims, workload, acc_config, fixed_flops=head)
        except ValueError as err:  # short sequences cap the reachable speed-up
            notes.append(f"{name} skipped: {err}")
            continue
        fn = jit_module(model, lambda m, x, schedule=schedule: _pruned(m, x, schedule))
        candidates[name] = lambda fn=fn: fn(inputs)
        flop_speedups[name] = predicted_speedup(dims, schedule, workload, fixed_flops=head)
        info[name] = dict(rate=schedule.rate, tokens_per_layer=list(schedule.counts(t)))
    timings = time_interleaved(candidates, config.rounds)
    args = dict(
        batch_size=b,
        seq_len=t,
        num_layers=config.num_layers,
        variant=str(acc_config.variant),
        profile=str(acc_config.profile),
        targets=list(config.acc_speedups),
        rounds=config.rounds,
    )
    return make_result(
        "acc",
        timings,
        BASELINE,
        args,
        flop_speedups=flop_speedups,
        info=info,
        notes=tuple(notes),
    )


def _pruned(model, inputs, schedule: KeepSchedule):
    out = acc_classify(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], schedule
    )
    return out.logits
