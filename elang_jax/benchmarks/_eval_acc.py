"""ACC token pruning on a GLUE dev set (eval/bench_acc.py): accuracy, predicted and measured
speed-up per speed setting; and GPT-2 prefill time against the speed knob.

One fine-tuned model, several speed settings chosen offline with `tune_schedule` (a FLOP
target in, a speed knob out, no retraining). The baseline is the unpruned model on the same
length buckets and batches, measured in the same process, so dropping padding earns nothing:
both sides see batches of `batch_size` rows padded to the same bucket. Timing: every setting
is compiled and scored by one pass over the dev set, then `elang_jax.timing.time_interleaved`
runs the passes (one call: a pass over the dev set) for `repeats` rounds; each setting's
fastest pass is kept (the machine is shared; the minimum is the least disturbed), and the
median of per-round paired ratios is reported too. Measured speed-up = baseline time /
setting time; predicted = the cost model's FLOP ratio on the same workload (padded rows
included).

Shape vocabulary: b batch rows, t padded length, c classes, n examples.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elang_jax import data
from elang_jax.flops import lm_head_flops
from elang_jax.models import BertForSequenceClassification
from elang_jax.pruning import (
    AccConfig,
    KeepSchedule,
    LayerDims,
    acc_logits,
    batch_workload,
    classifier_head_flops,
    predicted_speedup,
    tune_schedule,
)
from elang_jax.timing import over_batches, paired_speedups, time_interleaved

BASELINE = "unpruned"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccEvalConfig:
    """What eval/bench_acc.py evaluates on a GLUE dev set.

    Attributes:
      model_dir: the fine-tuned classifier (Hugging Face directory).
      task: GLUE task name.
      targets: predicted FLOP speed-ups, one schedule each (tuned offline per variant).
      rates: speed knobs instead of `targets`; None: use `targets`.
      variants: `AccVariant` values, each scored at every target.
      profile: `Profile` value of the keep schedules.
      batch_size: rows of every padded batch.
      buckets: the padded lengths.
      max_length: tokens kept per example (longer ones truncated).
      repeats: timing rounds.
      limit: the first this many batches only; None: all.
    """

    model_dir: str
    task: str = "sst2"
    targets: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0)
    rates: tuple[float, ...] | None = None
    variants: tuple[str, ...] = ("attention", "value_norm")
    profile: str = "geometric"
    batch_size: int = 64
    buckets: tuple[int, ...] = (16, 32, 64, 128)
    max_length: int = 128
    repeats: int = 5
    limit: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(float(x) for x in self.targets))
        if self.rates is not None:
            object.__setattr__(self, "rates", tuple(float(x) for x in self.rates))
        object.__setattr__(self, "variants", tuple(str(x) for x in self.variants))
        object.__setattr__(self, "buckets", tuple(int(x) for x in self.buckets))
        for name in ("batch_size", "max_length", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gpt2PrefillConfig:
    """GPT-2 prefill timing: a random 6 x 256 GPT-2, batch 8, 16 cache slots to generate.

    Attributes:
      rates: speed knobs, the first the baseline (1.0: unpruned).
      length: prompt tokens.
      repeats: timing rounds.
    """

    rates: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4, 0.25)
    length: int = 256
    repeats: int = 5

    def __post_init__(self):
        object.__setattr__(self, "rates", tuple(float(x) for x in self.rates))
        if not self.rates:
            raise ValueError("rates is empty")
        if self.length < 1 or self.repeats < 1:
            raise ValueError(f"length and repeats must be >= 1, got {self.length=} {self.repeats=}")


def evaluate_acc(config: AccEvalConfig) -> dict[str, Any]:
    """Every speed setting of every variant on the dev set, against the unpruned model.

    Returns:
      {"task", "model_dir", "batch_size", "buckets", "workload" ({padded length: rows}),
      "repeats", "examples", "results": one row per setting (the unpruned baseline first)
      with accuracy (and F1 where the task reports it), predicted_speedup, times (seconds of
      each pass), time_s (the fastest), measured_speedup, measured_speedup_paired_median,
      measured_over_predicted, accuracy_drop_points}.
    """
    from elang_jax.hf import from_pretrained
    from elang_jax.training import classification_metrics

    task = data.GLUE_TASKS[config.task]
    model = from_pretrained(config.model_dir, head="sequence_classification")
    assert isinstance(model, BertForSequenceClassification), type(model).__name__
    tokenizer = data.load_tokenizer(config.model_dir)
    examples = data.read_glue(config.task, "dev")
    encoded = data.encode_glue(tokenizer, examples, config.max_length, truncate=True)
    buckets = data.LengthBuckets(config.buckets)
    host = list(
        data.iterate_batches(
            encoded, config.batch_size, buckets, shuffle=False, sort_by_length=True
        )
    )
    if config.limit:
        host = host[: config.limit]
    batches = [
        jax.device_put(
            dict(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                token_type_ids=b.token_type_ids,
            )
        )
        for b in host
    ]
    valid = np.concatenate([b.valid for b in host])
    labels = np.concatenate([b.labels for b in host])[valid]
    workload = batch_workload(host)

    cfg = model.config
    dims = LayerDims.of(cfg)
    head = classifier_head_flops(cfg)
    settings: list[tuple[str, str | None, KeepSchedule | None]] = [(BASELINE, None, None)]
    for variant in config.variants:
        acc = AccConfig.bert(variant=variant, profile=config.profile)
        if config.rates is not None:
            schedules = [KeepSchedule.from_speed(r, cfg.num_layers, acc) for r in config.rates]
        else:
            schedules = [
                tune_schedule(x, dims, workload, acc, fixed_flops=head) for x in config.targets
            ]
        for s in schedules:
            settings.append((f"{variant} rate={s.rate:.4f}", variant, s))

    graphdef, state = nnx.split(model)
    results, passes = [], {}
    for i, (name, variant, schedule) in enumerate(settings):

        def forward(b, schedule=schedule):
            return acc_logits(graphdef, state, schedule, b)

        # The scoring pass compiles every batch shape: the timing needs no warm-up.
        outs = jax.block_until_ready([forward(b) for b in batches])
        logits = np.concatenate([np.asarray(x) for x in outs])
        preds = np.argmax(logits[valid], axis=-1)
        results.append(
            {
                "setting": name,
                "variant": variant,
                "rate": None if schedule is None else schedule.rate,
                "counts": None if schedule is None else schedule.table(workload),
                "predicted_speedup": 1.0
                if schedule is None
                else predicted_speedup(dims, schedule, workload, fixed_flops=head),
                **classification_metrics(preds, labels, task.metrics),
            }
        )
        passes[str(i)] = over_batches(forward, batches)  # settings may share a name
    timings = time_interleaved(passes, config.repeats, warm_up=False)
    keys = list(passes)
    base = timings[keys[0]]
    base_acc = results[0]["accuracy"]
    for key, row in zip(keys, results, strict=True):
        t = timings[key]
        row["times"] = [ms / 1e3 for ms in t.samples_ms]
        row["time_s"] = t.min_ms / 1e3
        row["measured_speedup"] = base.min_ms / t.min_ms
        # Rounds run the settings back to back, so a round's ratio shares its disturbances.
        row["measured_speedup_paired_median"] = float(np.median(paired_speedups(base, t)))
        row["measured_over_predicted"] = row["measured_speedup"] / row["predicted_speedup"]
        row["accuracy_drop_points"] = 100 * (base_acc - row["accuracy"])
    return {
        "task": config.task,
        "model_dir": config.model_dir,
        "batch_size": config.batch_size,
        "buckets": list(buckets.lengths),
        "workload": workload,
        "repeats": config.repeats,
        "examples": int(valid.sum()),
        "results": results,
    }


def format_acc(result: dict[str, Any]) -> str:
    """`evaluate_acc`'s result as a table."""
    rows = result["results"]
    with_f1 = any("f1" in r for r in rows)
    lines = [
        f"{result['task']} dev, {result['examples']} examples, batch {result['batch_size']}, "
        f"workload {result['workload']}, model {result['model_dir']}",
        f"{'setting':28s} {'acc':>7s} {'dAcc':>6s} {'pred':>6s} {'meas':>6s} {'m/p':>5s} "
        f"{'paired':>6s}" + ("  f1" if with_f1 else ""),
    ]
    for row in rows:
        line = (
            f"{row['setting']:28s} {100 * row['accuracy']:7.2f} "
            f"{-row['accuracy_drop_points']:+6.2f} {row['predicted_speedup']:6.2f} "
            f"{row['measured_speedup']:6.2f} {row['measured_over_predicted']:5.2f} "
            f"{row['measured_speedup_paired_median']:6.2f}"
        )
        if "f1" in row:
            line += f"  {100 * row['f1']:.2f}"
        lines.append(line)
    return "\n".join(lines)


def gpt2_prefill(config: Gpt2PrefillConfig) -> dict[str, Any]:
    """Time to first token of a random GPT-2 against the speed knob (prefill only).

    Returns:
      {"gpt2_prefill": one row per rate with counts (tokens per layer), predicted_speedup,
      times (seconds of each round), ms (the fastest) and measured_speedup (the first
      rate's fastest over this one's)}.
    """
    from elang_jax.models import GPT2Config, GPT2LMHeadModel
    from elang_jax.pruning import acc_prefill

    gpt2 = GPT2Config.tiny(n_layer=6, n_embd=256, n_head=8, n_positions=512, vocab_size=1000)
    model = GPT2LMHeadModel(gpt2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    b, t, m = 8, config.length, 16
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(0, 999, (b, t)), jnp.int32)
    mask = jnp.ones((b, t), jnp.int32)
    dims = LayerDims.of(gpt2)
    # The LM head on the last prompt position: pruning leaves it alone.
    head = lm_head_flops(1, gpt2.n_embd, gpt2.vocab_size)

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def prefill(graphdef, state, schedule, ids, mask):
        return acc_prefill(nnx.merge(graphdef, state), ids, mask, schedule, m).logits

    rows, calls = [], {}
    for i, rate in enumerate(config.rates):
        schedule = KeepSchedule.from_speed(rate, gpt2.n_layer, AccConfig.gpt2())
        rows.append(
            {
                "rate": rate,
                "counts": schedule.counts(t),
                "predicted_speedup": predicted_speedup(
                    dims, schedule, {t: b}, extra_keys=m, fixed_flops=head
                ),
            }
        )
        calls[str(i)] = lambda s=schedule: prefill(graphdef, state, s, ids, mask)
    timings = time_interleaved(calls, config.repeats)
    base = timings["0"].min_ms
    for i, row in enumerate(rows):
        timing = timings[str(i)]
        row["times"] = [ms / 1e3 for ms in timing.samples_ms]
        row["ms"] = timing.min_ms
        row["measured_speedup"] = base / timing.min_ms
    return {
        "model": f"random GPT-2 {gpt2.n_layer}x{gpt2.n_embd}, batch {b}, prompt {t}",
        "args": config,
        "gpt2_prefill": rows,
    }


def format_gpt2_prefill(result: dict[str, Any]) -> str:
    """`gpt2_prefill`'s result as a table."""
    lines = [
        f"GPT-2 prefill, {result['model']}",
        f"{'rate':>6s} {'ms':>8s} {'pred':>6s} {'meas':>6s}  counts",
    ]
    for row in result["gpt2_prefill"]:
        lines.append(
            f"{row['rate']:6.2f} {row['ms']:8.2f} {row['predicted_speedup']:6.2f} "
            f"{row['measured_speedup']:6.2f}  {row['counts']}"
        )
    return "\n".join(lines)
