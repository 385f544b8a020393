"""MoEfies a fine-tuned GLUE classifier and reports dev accuracy against the dense model.

Usage (from the repository root)::

    nice -n 10 python train/moefy_glue.py --model-dir /work/runs/super/final \
        --experts 8 16 --active 0.25 0.125 --methods random kmeans coactivation \
        --json /tmp/moefy_sst2.json

Steps: collect the hidden states entering every FFN on `--train-sentences` random training
sentences; for each expert count and split method, MoEfy a copy of the model (split neurons,
train one MLP router per layer); evaluate on the dev split at each active fraction. The
router's best epoch is picked at the first active fraction; other fractions reuse the router.
The work is `elang_jax.moe.moefy_glue`; this script only reads the flags.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys

from elang_jax import moe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model-dir", default="/work/runs/super/final")
    p.add_argument("--task", default="sst2")
    p.add_argument("--train-sentences", type=int, default=4000)
    p.add_argument("--max-tokens", type=int, default=40000, help="FFN inputs kept per layer")
    p.add_argument("--experts", type=int, nargs="+", default=[8, 16])
    p.add_argument("--active", type=float, nargs="+", default=[0.25, 0.125])
    p.add_argument("--methods", nargs="+", default=[m.value for m in moe.SplitMethod])
    p.add_argument("--router", default="mlp", choices=[r.value for r in moe.RouterKind])
    p.add_argument("--router-epochs", type=int, default=20)
    p.add_argument("--impl", default="capacity", choices=[i.value for i in moe.MoEImpl])
    p.add_argument(
        "--calibrate-steps",
        type=int,
        default=0,
        help="after MoEfication, fine-tune this many steps with routers frozen (0: none)",
    )
    p.add_argument("--calibrate-lr", type=float, default=3e-5)
    p.add_argument(
        "--eval-capacity-factor",
        type=float,
        help="also evaluate with this capacity factor (overflow dropped, as in the fast path)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, force=True)
    config = moe.SweepConfig(
        experts=args.experts,
        active=args.active,
        methods=args.methods,
        router=args.router,
        router_epochs=args.router_epochs,
        impl=args.impl,
        max_tokens=args.max_tokens,
        calibrate_steps=args.calibrate_steps,
        eval_capacity_factor=args.eval_capacity_factor,
        seed=args.seed,
    )
    moe.moefy_glue(
        args.model_dir,
        config,
        task=args.task,
        train_sentences=args.train_sentences,
        calibrate_lr=args.calibrate_lr,
        json_path=args.json,
        record=vars(args),
        log=functools.partial(print, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
