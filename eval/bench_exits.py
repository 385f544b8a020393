"""Multi-exit MiniLM on a GLUE task: accuracy against layers used, and the batched exit step's
measured speed-up against the full model, in one run.

    python eval/bench_exits.py --model runs/super/final --json runs/exits.json

DeeBERT's recipe on a fine-tuned classifier: its backbone and final head stay frozen, and an
off-ramp (pooler + classifier, the pooler initialised from the final one) after every other
layer is trained on the frozen features (`--pooling`: [CLS] or the mean over tokens) of
`--train-limit` training examples. Per-exit temperatures and every policy's threshold are
chosen on the held-out calibration split (the one the model was fine-tuned without:
`--holdout*`, default the sst2_minilm preset's 1,500 whole sentences); everything is reported
on dev. A driver of `elang_jax.benchmarks.evaluate_exits`: the compiled exit step and the
full model run on the same padded, length-sorted dev batches of `--batch-size`, timed
interleaved, pass by pass (`--repeats` rounds), so that load on a shared machine hits both
alike; the ideal speed-up is the layer count over the mean layers used.
"""

from __future__ import annotations

import argparse

from elang_jax import benchmarks as B
from elang_jax import jsonio


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model", required=True, help="fine-tuned classifier (HF directory)")
    p.add_argument("--task", default="sst2")
    p.add_argument("--holdout", type=int, default=1500)
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--holdout-kind", choices=["random", "sentences"], default="sentences")
    p.add_argument("--train-limit", type=int, default=16000, help="examples for the off-ramps")
    p.add_argument("--epochs", type=float, default=4.0, help="off-ramp training epochs")
    p.add_argument("--pooling", choices=["cls", "mean"], default="mean", help="off-ramp input")
    p.add_argument("--epsilon", type=float, default=0.0, help="accuracy drop allowed on calib")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--json", default=None)
    args = vars(p.parse_args(argv))
    out = args.pop("json")
    result = B.evaluate_exits(B.ExitsEvalConfig(**args))
    print(B.format_exits(result))
    if out:
        jsonio.write_json(result, out)


if __name__ == "__main__":
    main()
