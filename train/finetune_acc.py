"""Fine-tune a BERT-family classifier with ACC token elimination active.

    # SST-2: brief elimination fine-tune of the already fine-tuned MiniLM
    nice -n 10 python train/finetune_acc.py --task sst2 --model-dir /work/runs/super/final \
        --workdir /work/runs/acc_sst2 --rates 1.0,0.7,0.5,0.35 --max-steps 600 --lr 2e-5
    # MRPC from the raw MiniLM
    nice -n 10 python train/finetune_acc.py --task mrpc --workdir /work/runs/acc_mrpc \
        --epochs 3 --lr 5e-5 --max-length 128 --buckets 32,64,128

Each step draws its speed knob from `--rates` (seeded, a function of the step), so one model
serves every speed chosen offline afterwards (eval/bench_acc.py). Training is the library's
loop (`elang_jax.training.train_and_evaluate`) with ACC's forward hook
(`elang_jax.pruning._train.finetune_acc`): checkpoints, exact resume (re-run the same
command), `<workdir>/metrics.jsonl` (the loss curve) and `<workdir>/final` (Hugging Face
directory with the tokenizer). `<workdir>/acc_train.json` holds the settings and the dev
accuracy of the unpruned model. `--max-minutes` stops early and still saves.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from elang_jax.pruning import AccConfig, AccVariant, Profile, finetune_acc
from elang_jax.training import FinetuneConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    p.add_argument("--data-source", choices=["tsv", "tfds"], default="tsv")
    p.add_argument("--data-dir", default=None, help="TFDS data directory")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> FinetuneConfig:
    """The run's `FinetuneConfig`."""
    model_dir = args.model_dir
    if model_dir is None:
        from elang_jax.checkpoints import minilm_l6_dir

        model_dir = str(minilm_l6_dir())
    return FinetuneConfig(
        task=args.task,
        model_dir=model_dir,
        max_length=args.max_length,
        buckets=tuple(int(x) for x in args.buckets.split(",")),
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_ratio=0.06,
        epochs=args.epochs,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        seed=args.seed,
        train_limit=args.train_limit,
        log_every=args.log_every,
        data_source=args.data_source,
        data_dir=args.data_dir,
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    logging.getLogger("absl").setLevel(logging.WARNING)
    rates = [float(r) for r in args.rates.split(",")]
    acc = AccConfig.bert(variant=args.variant, profile=args.profile)
    scores = finetune_acc(build_config(args), args.workdir, rates, acc)
    summary = {"args": vars(args), "dev_unpruned": scores, "steps": scores["step"]}
    (Path(args.workdir) / "acc_train.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({"dev_unpruned": scores, "steps": scores["step"]}), flush=True)
    return summary


if __name__ == "__main__":
    main()
