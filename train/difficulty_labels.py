"""CascadeBERT difficulty labels from a small model's fine-tuning run.

    python train/difficulty_labels.py --workdir runs/swift --out runs/swift/hard.npy

Restores up to --checkpoints evenly spaced checkpoints of the run, predicts its own training
set (after the run's holdout, in order) with each, and marks an example hard when any
checkpoint gets it wrong. The output feeds `finetune_glue.py --difficulty-file`.
"""

from __future__ import annotations

import argparse

import numpy as np

from elang_jax.training import checkpoint_predictions, difficulty_labels


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoints", type=int, default=3)
    args = p.parse_args()
    preds, labels, steps = checkpoint_predictions(args.workdir, args.checkpoints)
    hard = difficulty_labels(preds, labels)
    np.save(args.out, hard)
    accs = ", ".join(
        f"step {s}: {100 * (p == labels).mean():.2f}%" for s, p in zip(steps, preds, strict=True)
    )
    print(f"train accuracy per checkpoint: {accs}")
    print(f"hard: {hard.sum()} of {len(hard)} ({100 * hard.mean():.1f}%) -> {args.out}")


if __name__ == "__main__":
    main()
