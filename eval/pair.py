"""E-LANG with a 12-layer MPNet-base Super behind a MiniLM-L6 Swift on a GLUE task (issue 15).

    PYTHONPATH=. python eval/pair.py --swift-distill --json eval/results/pair_sst2_cpu.json
    PYTHONPATH=. python eval/pair.py --task mrpc --swift-distill \
        --json eval/results/pair_mrpc_cpu.json

Fine-tunes (or loads from `<elang_jax cache>/pair/<task>/`, resuming a half-finished run) an
MPNet-base Super and a MiniLM-L6 Swift without the calibration holdout (SST-2: 1,500 whole
training sentences; a sentence-pair task: 600 random pairs); `--swift-from DIR` adopts a
finished demo Super run (`<cache>/demo/sst2/super`) as the Swift when it ran the same
recipe. Then chooses every method's thresholds on the calibration split and reports on dev
the accuracy, share sent to Super, FLOP and measured speed-up (compiled steps on per-tier
inputs, timed interleaved against Super's compiled forward). A driver of
`elang_jax.benchmarks.evaluate_pair`; `--finetune-only` stops after fine-tuning.
"""

from __future__ import annotations

import argparse
import logging

from elang_jax import benchmarks as B
from elang_jax import jsonio


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--task", default="sst2", help="GLUE task (sst2, or a pair task: mrpc)")
    p.add_argument("--cache-dir", default=None, help="default: <elang_jax cache>/pair/TASK")
    p.add_argument("--swift-from", default=None, help="a finished demo Super run to adopt")
    p.add_argument("--super-train-examples", type=int, default=None)
    p.add_argument("--super-lr", type=float, default=None, help="Super's peak learning rate")
    p.add_argument(
        "--swift-distill",
        action="store_true",
        help="distil the Swift from the fine-tuned Super (soft labels on its training set)",
    )
    p.add_argument(
        "--swift-train-examples",
        type=int,
        default=None,
        help="the Swift's training examples (default: the task's recipe; doubled when distilled)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="evaluation and timing batch")
    p.add_argument("--eval-limit", type=int, default=None, help="first N dev examples")
    p.add_argument(
        "--cascade-buckets",
        type=int,
        default=8,
        help="at most this many bucket sizes for the escalated rows (measured/FLOP 0.95 "
        "with 8 even ones against 0.78 with 4, on SST-2)",
    )
    p.add_argument(
        "--even-buckets",
        action="store_true",
        help="buckets of b/n, 2b/n, ..., b rows instead of ones fitted to the calibration "
        "split's routed counts (the cascades' and the composed rows')",
    )
    p.add_argument("--timing-rounds", type=int, default=3)
    p.add_argument("--timing-batches", type=int, default=None, help="default: every batch")
    p.add_argument("--finetune-only", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    super_recipe = {
        k: v
        for k, v in (
            ("train_examples", args.super_train_examples),
            ("learning_rate", args.super_lr),
        )
        if v is not None
    }
    swift_recipe = (
        None if args.swift_train_examples is None else {"train_examples": args.swift_train_examples}
    )
    config = B.PairEvalConfig.full(
        task=args.task,
        cache_dir=args.cache_dir,
        swift_from=args.swift_from,
        super_recipe=super_recipe,
        swift_recipe=swift_recipe,
        distill=args.swift_distill,
        batch_size=args.batch_size,
        eval_limit=args.eval_limit,
        cascade_buckets=args.cascade_buckets,
        fit_cascade_buckets=not args.even_buckets,
        composed=B.PairComposed(fit_buckets=not args.even_buckets),
        timing_rounds=args.timing_rounds,
        timing_batches=args.timing_batches,
    )
    models = B.finetune_pair(config)
    if args.finetune_only:
        for role, m in models.items():
            print(role, m.summary())
        return
    result = B.evaluate_pair(config, models)
    print(B.format_pair(result))
    if args.json:
        jsonio.write_json(result, args.json)


if __name__ == "__main__":
    main()
