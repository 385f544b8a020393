"""Swift/Super cascades on a GLUE task: accuracy, share sent to Super, FLOP and measured speed-up.

    python eval/bench_cascade.py --super runs/super/final --swift runs/swift/final \
        [--swift-dar runs/swift_dar/final] --json runs/cascade.json

Thresholds are chosen on a held-out part of the training split (`--holdout`, `--holdout-seed`
and `--holdout-kind`: the same split the models were fine-tuned without; the defaults are the
sst2_minilm preset's 1,500 whole sentences), and every number is reported on the dev split.
A driver of `elang_jax.benchmarks.evaluate_cascades`: the compiled cascade steps, each Swift
alone and Super alone run on the same padded batches of `--batch-size` in one process, timed
interleaved (`--repeats` rounds), so the measured ratio compares like with like. The FLOP
speed-up is the analytic ideal: Super FLOPs over Swift FLOPs plus the escalated examples'
Super FLOPs, at the padded batch length, without bucket rounding.
"""

from __future__ import annotations

import argparse

from elang_jax import benchmarks as B
from elang_jax import jsonio


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--super", required=True, dest="super_dir")
    p.add_argument("--swift", required=True, dest="swift_dir")
    p.add_argument("--swift-dar", default=None, dest="swift_dar_dir")
    p.add_argument("--holdout", type=int, default=1500)
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--holdout-kind", choices=["random", "sentences"], default="sentences")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--objective", choices=["accuracy", "guarantee"], default="accuracy")
    p.add_argument("--epsilon", type=float, default=0.0, help="accuracy drop allowed on calib")
    p.add_argument("--delta", type=float, default=0.1, help="failure probability (guarantee)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--json", default=None)
    args = vars(p.parse_args(argv))
    out = args.pop("json")
    result = B.evaluate_cascades(B.CascadeEvalConfig(**args))
    print(B.format_cascades(result))
    if out:
        jsonio.write_json(result, out)


if __name__ == "__main__":
    main()
