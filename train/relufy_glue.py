"""ReLU-fication: swaps a GELU classifier's FFN activation for ReLU and fine-tunes it briefly.

MoEfication needs sparse FFN activations: with ReLU most neurons are exactly zero on a token,
so routing to a few experts loses little. GELU leaves small negative values everywhere. The
recipe: copy the fine-tuned checkpoint with `hidden_act = "relu"` in its config.json, then
fine-tune a fraction of an epoch at a small learning rate with the ordinary GLUE loop
(`elang_jax.training.train_and_evaluate`, the `sst2_minilm` preset otherwise unchanged).
The work is `elang_jax.moe.relufy_glue`; this script only reads the flags.

Usage (from the repository root)::

    nice -n 10 python train/relufy_glue.py --model-dir /work/runs/super/final \
        --workdir /tmp/relufy_sst2 --epochs 0.2 --lr 2e-5

Outputs: <workdir>/metrics.jsonl and <workdir>/final/ (a Hugging Face directory, ReLU), plus
the accuracy right after the swap (before any fine-tuning) in <workdir>/relufy.json.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from elang_jax import moe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model-dir", default="/work/runs/super/final")
    p.add_argument("--workdir", required=True)
    p.add_argument("--epochs", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--max-steps", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    moe.relufy_glue(
        args.model_dir,
        args.workdir,
        epochs=args.epochs,
        learning_rate=args.lr,
        max_steps=args.max_steps,
        record=vars(args),
        log=functools.partial(print, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
