"""ReLU-fication: swaps a GELU classifier's FFN activation for ReLU and fine-tunes it briefly.

MoEfication needs sparse FFN activations: with ReLU most neurons are exactly zero on a token,
so routing to a few experts loses little. GELU leaves small negative values everywhere. The
recipe: copy the fine-tuned checkpoint with `hidden_act = "relu"` in its config.json, then
fine-tune a fraction of an epoch at a small learning rate with the ordinary GLUE loop
(`elang_jax.training.train_and_evaluate`, the `sst2_minilm` preset otherwise unchanged).

Usage (from the repository root)::

    nice -n 10 python train/relufy_glue.py --model-dir /work/runs/super/final \
        --workdir /tmp/relufy_sst2 --epochs 0.2 --lr 2e-5

Outputs: <workdir>/metrics.jsonl and <workdir>/final/ (a Hugging Face directory, ReLU), plus
the accuracy right after the swap (before any fine-tuning) in <workdir>/relufy.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from elang_jax import data, training
from elang_jax.hf import from_pretrained


def relu_copy(model_dir: str | Path, out_dir: str | Path) -> Path:
    """A copy of a Hugging Face directory whose config says `hidden_act: relu`."""
    src, out = Path(model_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            shutil.copy2(f, out / f.name)
    config = json.loads((src / "config.json").read_text())
    config["hidden_act"] = "relu"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", default="/work/runs/super/final")
    p.add_argument("--workdir", required=True)
    p.add_argument("--epochs", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--max-steps", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    workdir = Path(args.workdir)
    init = relu_copy(args.model_dir, workdir / "relu_init")
    config = training.sst2_minilm(
        model_dir=init,
        epochs=args.epochs,
        learning_rate=args.lr,
        warmup_ratio=0.1,
        eval_every=0,
        save_every=0,
        progress=False,
        **({"max_steps": args.max_steps} if args.max_steps else {}),
    )
    # Accuracy of the swapped model before fine-tuning: what the swap alone costs.
    model = from_pretrained(init, head="sequence_classification")
    tokenizer = data.load_tokenizer(init)
    dev = data.encode_glue(tokenizer, data.read_glue("sst2", "dev"), 64, truncate=True)
    buckets = data.LengthBuckets(config.buckets)
    swapped = training.evaluate(model, dev, config.eval_batch_size, buckets)
    print(f"after the swap, before fine-tuning: {swapped}", flush=True)
    metrics = training.train_and_evaluate(config, workdir)
    print(json.dumps(metrics, indent=2, default=str), flush=True)
    (workdir / "relufy.json").write_text(
        json.dumps({"swapped": swapped, "finetuned": metrics, "args": vars(args)}, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
