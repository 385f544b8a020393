"""Fine-tunes a BERT-family classifier on a GLUE task and evaluates it on the dev split.

Usage (from the repository root)::

    PYTHONPATH=. python train/finetune_glue.py --task sst2 --preset sst2_minilm \
        --workdir /tmp/ft_sst2

    # Any GLUE task from a Hugging Face directory (default: all-MiniLM-L6-v2), quick run:
    PYTHONPATH=. python train/finetune_glue.py --task mrpc --workdir /tmp/ft_mrpc \
        --epochs 3 --batch-size 32 --lr 5e-5 --max-steps 200

    # The same examples through tensorflow-datasets (the glue_tfds ArrayRecord dataset, built
    # into --data-dir on first use, read with as_data_source()):
    PYTHONPATH=. python train/finetune_glue.py --task rte --workdir /tmp/ft_rte \
        --data-source tfds --data-dir /tmp/tfds

    # CascadeBERT's difficulty-aware loss (hard flags from train/difficulty_labels.py):
    PYTHONPATH=. python train/finetune_glue.py --task sst2 --preset sst2_minilm \
        --num-layers 2 --difficulty-file runs/hard.npy --workdir /tmp/ft_swift_dar

Re-running with the same --workdir resumes from its latest checkpoint; Ctrl-C saves one.
Outputs: <workdir>/metrics.jsonl, <workdir>/checkpoints/, <workdir>/final/ (a Hugging Face
directory with the tokenizer).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from elang_jax import data, training
from elang_jax.cascade import DarConfig, DifficultyAwareLoss

PRESETS = {"sst2_minilm": training.sst2_minilm}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments; unset options keep the preset's (or the defaults') values."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--task", required=True, help="GLUE task: sst2, mrpc, rte, qnli")
    p.add_argument("--workdir", required=True, help="output directory (resumed if it exists)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named config")
    p.add_argument("--model-dir", help="Hugging Face directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute, float32 parameters")
    p.add_argument("--max-steps", type=int, help="stop early (the schedule is unchanged)")
    p.add_argument("--train-limit", type=int, help="train on the first N examples only")
    p.add_argument("--eval-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--holdout", type=int, help="training examples set aside for calibration")
    p.add_argument("--holdout-seed", type=int)
    p.add_argument(
        "--holdout-kind", choices=["random", "sentences"], help="random examples or sentences"
    )
    p.add_argument("--num-layers", type=int, help="keep only the checkpoint's first N layers")
    p.add_argument("--difficulty-file", help="hard flags (.npy) for CascadeBERT's DAR loss")
    p.add_argument("--dar-weight", type=float, help="DAR weight (lambda; default 0.5)")
    p.add_argument("--dar-margin", type=float, help="DAR margin (default 0.5)")
    p.add_argument(
        "--data-source",
        choices=[s.value for s in data.DataSource],
        help="GLUE from the shipped TSVs (default) or the glue_tfds TFDS dataset",
    )
    p.add_argument("--data-dir", help="TFDS data directory (default: <elang_jax cache>/tfds)")
    p.add_argument("--save-every", type=int)
    p.add_argument("--keep-checkpoints", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> training.FinetuneConfig:
    """The run's `FinetuneConfig`: the preset (or defaults) with the given options applied."""
    overrides = {
        "model_dir": args.model_dir,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "max_steps": args.max_steps,
        "train_limit": args.train_limit,
        "eval_every": args.eval_every,
        "seed": args.seed,
        "holdout": args.holdout,
        "holdout_seed": args.holdout_seed,
        "holdout_kind": args.holdout_kind,
        "num_layers": args.num_layers,
        "data_source": args.data_source,
        "data_dir": args.data_dir,
        "save_every": args.save_every,
        "keep_checkpoints": args.keep_checkpoints,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.bf16:
        overrides["bf16"] = True
    if args.no_progress:
        overrides["progress"] = False
    if args.preset is not None:
        config = PRESETS[args.preset](**overrides)
        if config.task != args.task:
            raise SystemExit(f"--preset {args.preset} is for task {config.task}, not {args.task}")
        return config
    if "model_dir" not in overrides:
        from elang_jax.checkpoints import minilm_l6_dir

        overrides["model_dir"] = str(minilm_l6_dir())
    return training.FinetuneConfig(task=args.task, **overrides)


def build_loss(args: argparse.Namespace) -> DifficultyAwareLoss | None:
    """The loss hook: CascadeBERT's DAR with --difficulty-file, else None (cross-entropy)."""
    if args.difficulty_file is None:
        if args.dar_weight is not None or args.dar_margin is not None:
            raise SystemExit("--dar-weight and --dar-margin need --difficulty-file")
        return None
    settings = {"weight": args.dar_weight, "margin": args.dar_margin}
    return DifficultyAwareLoss(
        DarConfig(
            difficulty_file=args.difficulty_file,
            **{k: v for k, v in settings.items() if v is not None},
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # force: importing jax/orbax has already given the root logger a handler.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # orbax logs every file it writes through absl at INFO.
    logging.getLogger("absl").setLevel(logging.WARNING)
    config, loss = build_config(args), build_loss(args)
    described = {**config.to_json(), "loss": None if loss is None else loss.to_json()}
    print(json.dumps(described, indent=2), flush=True)
    metrics = training.train_and_evaluate(config, args.workdir, loss=loss)
    print(json.dumps(metrics, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
