"""Fine-tune a BERT-family classifier with ACC token elimination active.

    # SST-2: brief elimination fine-tune of the already fine-tuned MiniLM
    nice -n 10 python train/finetune_acc.py --task sst2 --model-dir /work/runs/super/final \
        --workdir /work/runs/acc_sst2 --rates 1.0,0.7,0.5,0.35 --max-steps 600 --lr 2e-5
    # MRPC from the raw MiniLM
    nice -n 10 python train/finetune_acc.py --task mrpc --workdir /work/runs/acc_mrpc \
        --epochs 3 --lr 5e-5 --max-length 128 --buckets 32,64,128

Each batch draws its speed knob from `--rates` (seeded by the step), so one model serves
every speed chosen offline afterwards (eval/bench_acc.py). The settings come from the
`FinetuneConfig` machinery (optimizer, schedule, model loading); only the forward differs
(`elang_jax.pruning.make_acc_train_step`). Writes `<workdir>/final` (Hugging Face directory
with the tokenizer) and `<workdir>/acc_train.json` (settings, loss curve, dev accuracy
unpruned). `--max-minutes` stops early and still saves.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from elang_jax import data
from elang_jax.hf import save_pretrained
from elang_jax.pruning import AccConfig, AccVariant, KeepSchedule, Profile, make_acc_train_step
from elang_jax.training import FinetuneConfig, build_model, evaluate, make_optimizer


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", default="sst2")
    p.add_argument("--model-dir", default=None, help="default: the raw all-MiniLM-L6-v2")
    p.add_argument("--workdir", required=True)
    p.add_argument("--rates", default="1.0,0.7,0.5,0.35")
    p.add_argument("--variant", default=AccVariant.ATTENTION.value)
    p.add_argument("--profile", default=Profile.GEOMETRIC.value)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--buckets", default="16,32,64")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=25)
    args = p.parse_args(argv)

    if args.model_dir is None:
        from elang_jax.checkpoints import minilm_l6_dir

        args.model_dir = str(minilm_l6_dir())
    buckets = tuple(int(x) for x in args.buckets.split(","))
    config = FinetuneConfig(
        task=args.task,
        model_dir=args.model_dir,
        max_length=args.max_length,
        buckets=buckets,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_ratio=0.06,
        epochs=args.epochs,
        seed=args.seed,
        train_limit=args.train_limit,
    )
    rates = [float(r) for r in args.rates.split(",")]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    tokenizer = data.load_tokenizer(args.model_dir)
    model = build_model(config)
    acc = AccConfig.bert(variant=args.variant, profile=args.profile)
    schedules = [KeepSchedule.from_speed(r, model.config.num_layers, acc) for r in rates]

    examples = data.read_glue(args.task, "train")
    if args.train_limit:
        examples = data.GlueExamples(
            text_a=examples.text_a[: args.train_limit],
            text_b=None if examples.text_b is None else examples.text_b[: args.train_limit],
            labels=examples.labels[: args.train_limit],
        )
    train = data.encode_glue(tokenizer, examples, args.max_length, truncate=True)
    dev = data.encode_glue(
        tokenizer, data.read_glue(args.task, "dev"), args.max_length, truncate=True
    )
    lengths = data.LengthBuckets(buckets)
    per_epoch = data.num_batches(train, args.batch_size)
    total = max(1, math.ceil(args.epochs * per_epoch))
    end = total if args.max_steps is None else min(total, args.max_steps)

    optimizer = make_optimizer(config, total)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = optimizer.init(params)
    step_fn = make_acc_train_step(graphdef, optimizer, jax.random.key(args.seed))
    choice = np.random.RandomState(args.seed)

    log, window, step, start = [], [], 0, time.perf_counter()
    stopped_early = False
    while step < end and not stopped_early:
        epoch = step // per_epoch
        for batch in data.iterate_batches(
            train,
            args.batch_size,
            lengths,
            shuffle=True,
            seed=args.seed,
            epoch=epoch,
            start_batch=step % per_epoch,
            sort_by_length=True,
        ):
            schedule = schedules[choice.randint(len(schedules))]
            device_batch = dict(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                token_type_ids=batch.token_type_ids,
                labels=batch.labels,
                valid=batch.valid,
            )
            params, opt_state, metrics = step_fn(
                params, rest, opt_state, device_batch, np.int32(step), schedule
            )
            step += 1
            window.append(metrics["loss"])
            if step % args.log_every == 0 or step == end:
                record = {
                    "step": step,
                    "loss": float(np.mean([float(x) for x in window])),
                    "minutes": (time.perf_counter() - start) / 60,
                }
                print(json.dumps(record), flush=True)
                log.append(record)
                window = []
            if step >= end:
                break
            if args.max_minutes and time.perf_counter() - start > 60 * args.max_minutes:
                stopped_early = True
                break

    model = nnx.merge(graphdef, params, rest)
    save_pretrained(model, workdir / "final", tokenizer)
    task = data.GLUE_TASKS[args.task]
    scores = evaluate(model, dev, 64, lengths, metrics=task.metrics)
    summary = {
        "args": vars(args),
        "steps": step,
        "schedule_steps": total,
        "examples_seen": step * args.batch_size,
        "stopped_early": stopped_early,
        "train_minutes": (time.perf_counter() - start) / 60,
        "dev_unpruned": scores,
        "log": log,
    }
    (workdir / "acc_train.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({"dev_unpruned": scores, "steps": step}), flush=True)
    return summary


if __name__ == "__main__":
    main()
