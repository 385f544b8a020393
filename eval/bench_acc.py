"""ACC token pruning on a GLUE dev set: accuracy, predicted and measured speed-up per speed.

    nice -n 10 python eval/bench_acc.py --model-dir /work/runs/acc_sst2/final --task sst2 \
        --targets 1.5,2,2.5,3 --variants attention,value_norm --json /work/runs/acc_sst2.json
    nice -n 10 python eval/bench_acc.py --gpt2-prefill --json /work/runs/acc_gpt2.json

One fine-tuned model, several speed settings chosen offline with `tune_schedule` (a FLOP
target in, a speed knob out, no retraining). The baseline is the unpruned model on the same
length buckets and batches, measured in the same process, so dropping padding earns nothing:
both sides see batches of `--batch-size` rows padded to the same bucket. A driver of
`elang_jax.benchmarks.evaluate_acc` (and `gpt2_prefill`): every setting is compiled first,
then the passes over the dev set are interleaved across settings for `--repeats` rounds and
each setting's fastest pass is kept (the machine is shared; the minimum is the least
disturbed; the median of per-round paired ratios is printed too).
Measured speed-up = baseline time / setting time;
predicted = the cost model's FLOP ratio on the same workload (padded rows included).
"""

from __future__ import annotations

import argparse

import jax

from elang_jax import benchmarks as B
from elang_jax import jsonio


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def _strs(text: str) -> tuple[str, ...]:
    return tuple(text.split(","))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", default=None, help="the fine-tuned classifier")
    p.add_argument("--task", default="sst2")
    p.add_argument("--targets", type=_floats, default="1.5,2,2.5,3", help="predicted speed-ups")
    p.add_argument("--rates", type=_floats, default=None, help="speed knobs instead of --targets")
    p.add_argument("--variants", type=_strs, default="attention,value_norm")
    p.add_argument("--profile", default="geometric")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--buckets", type=lambda s: tuple(map(int, s.split(","))), default="16,32,64,128"
    )
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--gpt2-prefill", action="store_true", help="time GPT-2 prefill instead")
    p.add_argument("--gpt2-rates", type=_floats, default="1.0,0.8,0.6,0.4,0.25")
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
        config = B.Gpt2PrefillConfig(
            rates=args.gpt2_rates, length=args.gpt2_length, repeats=args.repeats
        )
        out = B.gpt2_prefill(config)
        print(B.format_gpt2_prefill(out))
    else:
        if args.model_dir is None:
            p.error("--model-dir is required (unless --gpt2-prefill)")
        config = B.AccEvalConfig(
            model_dir=args.model_dir,
            task=args.task,
            targets=args.targets,
            rates=args.rates,
            variants=args.variants,
            profile=args.profile,
            batch_size=args.batch_size,
            buckets=args.buckets,
            max_length=args.max_length,
            repeats=args.repeats,
            limit=args.limit,
        )
        out = B.evaluate_acc(config)
        print(B.format_acc(out))
    if args.json:
        jsonio.write_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
