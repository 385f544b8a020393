"""ACC token pruning on a GLUE dev set: accuracy, predicted and measured speed-up per speed.

    nice -n 10 python eval/bench_acc.py --model-dir /work/runs/acc_sst2/final --task sst2 \
        --targets 1.5,2,2.5,3 --variants attention,value_norm --json /work/runs/acc_sst2.json
    nice -n 10 python eval/bench_acc.py --gpt2-prefill --json /work/runs/acc_gpt2.json

One fine-tuned model, several speed settings chosen offline with `tune_schedule` (a FLOP
target in, a speed knob out, no retraining). The baseline is the unpruned model on the same
length buckets and batches, measured in the same process, so dropping padding earns nothing:
both sides see batches of `--batch-size` rows padded to the same bucket. Timing: every
setting is compiled first, then the passes over the dev set are interleaved across
settings `--repeats` times and each setting's fastest pass is kept (the machine is shared;
the minimum is the least disturbed; the median of per-round paired ratios is printed too).
Measured speed-up = baseline time / setting time;
predicted = the cost model's FLOP ratio on the same workload (padded rows included).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from elang_jax import data
from elang_jax.hf import from_pretrained
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
from elang_jax.training import classification_metrics


def _run(fn, graphdef, state, schedule, batches):
    outs = [fn(graphdef, state, schedule, b) for b in batches]
    jax.block_until_ready(outs)
    return outs


def gpt2_prefill(args) -> dict:
    """Time to first token of a random GPT-2 against the speed knob (prefill only)."""
    from elang_jax.models import GPT2Config, GPT2LMHeadModel
    from elang_jax.pruning import acc_prefill

    config = GPT2Config.tiny(n_layer=6, n_embd=256, n_head=8, n_positions=512, vocab_size=1000)
    model = GPT2LMHeadModel(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    b, t, m = 8, args.gpt2_length, 16
    rng = np.random.RandomState(0)
    ids = jax.numpy.asarray(rng.randint(0, 999, (b, t)), jax.numpy.int32)
    mask = jax.numpy.ones((b, t), jax.numpy.int32)
    dims = LayerDims.of(config)
    head = 2 * config.n_embd * config.vocab_size

    @functools.partial(jax.jit, static_argnums=(0, 2))
    def prefill(graphdef, state, schedule, ids, mask):
        return acc_prefill(nnx.merge(graphdef, state), ids, mask, schedule, m).logits

    rows = []
    for rate in [float(r) for r in args.gpt2_rates.split(",")]:
        schedule = KeepSchedule.from_speed(rate, config.n_layer, AccConfig.gpt2())
        jax.block_until_ready(prefill(graphdef, state, schedule, ids, mask))
        rows.append({"rate": rate, "counts": schedule.counts(t), "times": []})
        rows[-1]["predicted_speedup"] = predicted_speedup(
            dims, schedule, {t: b}, extra_keys=m, fixed_flops=head
        )
    for _ in range(args.repeats):
        for row in rows:
            schedule = KeepSchedule.from_speed(row["rate"], config.n_layer, AccConfig.gpt2())
            start = time.perf_counter()
            jax.block_until_ready(prefill(graphdef, state, schedule, ids, mask))
            row["times"].append(time.perf_counter() - start)
    base = min(rows[0]["times"])
    print(f"GPT-2 prefill, random {config.n_layer}x{config.n_embd}, batch {b}, prompt {t}")
    print(f"{'rate':>6s} {'ms':>8s} {'pred':>6s} {'meas':>6s}  counts")
    for row in rows:
        row["ms"] = 1000 * min(row["times"])
        row["measured_speedup"] = base / min(row["times"])
        print(
            f"{row['rate']:6.2f} {row['ms']:8.2f} {row['predicted_speedup']:6.2f} "
            f"{row['measured_speedup']:6.2f}  {row['counts']}"
        )
    return {"gpt2_prefill": rows}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", default=None, help="the fine-tuned classifier")
    p.add_argument("--task", default="sst2")
    p.add_argument("--targets", default="1.5,2,2.5,3", help="predicted FLOP speed-ups")
    p.add_argument("--rates", default=None, help="speed knobs instead of --targets")
    p.add_argument("--variants", default="attention,value_norm")
    p.add_argument("--profile", default="geometric")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--buckets", default="16,32,64,128")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--gpt2-prefill", action="store_true", help="time GPT-2 prefill instead")
    p.add_argument("--gpt2-rates", default="1.0,0.8,0.6,0.4,0.25")
    p.add_argument("--gpt2-length", type=int, default=256)
    p.add_argument(
        "--cache-dir",
        default="/tmp/elang_jax_compile_cache",
        help="persistent XLA cache: a second model of the same architecture compiles nothing",
    )
    args = p.parse_args(argv)
    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    if args.gpt2_prefill:
        out = gpt2_prefill(args)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        return out

    if args.model_dir is None:
        p.error("--model-dir is required (unless --gpt2-prefill)")
    task = data.GLUE_TASKS[args.task]
    model = from_pretrained(args.model_dir, head="sequence_classification")
    tokenizer = data.load_tokenizer(args.model_dir)
    examples = data.read_glue(args.task, "dev")
    encoded = data.encode_glue(tokenizer, examples, args.max_length, truncate=True)
    buckets = data.LengthBuckets(tuple(int(x) for x in args.buckets.split(",")))
    host = list(
        data.iterate_batches(encoded, args.batch_size, buckets, shuffle=False, sort_by_length=True)
    )
    if args.limit:
        host = host[: args.limit]
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
    settings = [("unpruned", None, acc_logits, None)]
    for variant in args.variants.split(","):
        acc = AccConfig.bert(variant=variant, profile=args.profile)
        if args.rates:
            schedules = [
                KeepSchedule.from_speed(float(r), cfg.num_layers, acc)
                for r in args.rates.split(",")
            ]
        else:
            schedules = [
                tune_schedule(float(x), dims, workload, acc, fixed_flops=head)
                for x in args.targets.split(",")
            ]
        for s in schedules:
            settings.append((f"{variant} rate={s.rate:.4f}", variant, acc_logits, s))

    graphdef, state = nnx.split(model)
    results = []
    t0 = time.perf_counter()
    for name, variant, fn, schedule in settings:
        logits = np.concatenate(
            [np.asarray(x) for x in _run(fn, graphdef, state, schedule, batches)]
        )
        preds = np.argmax(logits[valid], axis=-1)
        row = {
            "setting": name,
            "variant": variant,
            "rate": None if schedule is None else schedule.rate,
            "counts": None if schedule is None else schedule.table(workload),
            "predicted_speedup": 1.0
            if schedule is None
            else predicted_speedup(dims, schedule, workload, fixed_flops=head),
            **classification_metrics(preds, labels, task.metrics),
            "times": [],
        }
        results.append(row)
    print(f"compiled and scored {len(settings)} settings in {time.perf_counter() - t0:.0f}s")
    for _ in range(args.repeats):
        for row, (_, _, fn, schedule) in zip(results, settings, strict=True):
            start = time.perf_counter()
            _run(fn, graphdef, state, schedule, batches)
            row["times"].append(time.perf_counter() - start)
    base_time = min(results[0]["times"])
    base_acc = results[0]["accuracy"]
    print(
        f"{args.task} dev, {int(valid.sum())} examples, batch {args.batch_size}, "
        f"workload {workload}, model {args.model_dir}"
    )
    header = (
        f"{'setting':28s} {'acc':>7s} {'dAcc':>6s} {'pred':>6s} {'meas':>6s} {'m/p':>5s} "
        f"{'paired':>6s}"
    )
    print(header + ("  f1" if "f1" in task.metrics else ""))
    for row in results:
        row["time_s"] = min(row["times"])
        row["measured_speedup"] = base_time / row["time_s"]
        # Rounds run the settings back to back, so a round's ratio shares its disturbances.
        paired = [a / b for a, b in zip(results[0]["times"], row["times"], strict=True)]
        row["measured_speedup_paired_median"] = float(np.median(paired))
        row["measured_over_predicted"] = row["measured_speedup"] / row["predicted_speedup"]
        row["accuracy_drop_points"] = 100 * (base_acc - row["accuracy"])
        line = (
            f"{row['setting']:28s} {100 * row['accuracy']:7.2f} "
            f"{-row['accuracy_drop_points']:+6.2f} {row['predicted_speedup']:6.2f} "
            f"{row['measured_speedup']:6.2f} {row['measured_over_predicted']:5.2f} "
            f"{row['measured_speedup_paired_median']:6.2f}"
        )
        if "f1" in row:
            line += f"  {100 * row['f1']:.2f}"
        print(line)
    out = {
        "task": args.task,
        "model_dir": args.model_dir,
        "batch_size": args.batch_size,
        "buckets": list(buckets.lengths),
        "workload": workload,
        "repeats": args.repeats,
        "results": results,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
