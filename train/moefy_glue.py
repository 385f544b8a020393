"""MoEfies a fine-tuned GLUE classifier and reports dev accuracy against the dense model.

Usage (from the repository root)::

    nice -n 10 python train/moefy_glue.py --model-dir /work/runs/super/final \
        --experts 8 16 --active 0.25 0.125 --methods random kmeans coactivation \
        --json /tmp/moefy_sst2.json

Steps: collect the hidden states entering every FFN on `--train-sentences` random training
sentences; for each expert count and split method, MoEfy a copy of the model (split neurons,
train one MLP router per layer); evaluate on the dev split at each active fraction. The
router's best epoch is picked at the first active fraction; other fractions reuse the router.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

from elang_jax import data, moe, training
from elang_jax.hf import from_pretrained

BUCKETS = (8, 16, 24, 32, 48, 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    model = from_pretrained(args.model_dir, head="sequence_classification")
    tokenizer = data.load_tokenizer(args.model_dir)
    buckets = data.LengthBuckets(BUCKETS)
    vocab = model.config.vocab_size
    dev = data.encode_glue(
        tokenizer, data.read_glue(args.task, "dev"), 64, truncate=True, vocab_size=vocab
    )
    full_train = data.read_glue(args.task, "train")
    rows = np.random.default_rng(args.seed).choice(len(full_train), args.train_sentences, False)
    train = data.select_examples(full_train, np.sort(rows))
    enc = data.encode_glue(tokenizer, train, 64, truncate=True, vocab_size=vocab)

    t0 = time.time()
    dense = training.evaluate(model, dev, 64, buckets)["accuracy"]
    batches = data.iterate_batches(enc, 64, buckets, shuffle=False, sort_by_length=True)
    inputs = moe.collect_ffn_inputs(model, batches, max_tokens=args.max_tokens, seed=args.seed)
    print(f"dense dev accuracy {dense:.4f}; FFN inputs {inputs[0].shape} per layer", flush=True)
    results = {"dense_accuracy": dense, "args": vars(args), "runs": []}
    for num_experts in args.experts:
        for method in args.methods:
            ks = [max(1, round(a * num_experts)) for a in args.active]
            config = moe.MoEConfig(
                num_experts=num_experts, top_k=ks[0], impl=args.impl, router=args.router
            )
            t = time.time()
            moefied, reports = moe.moefy(
                model,
                config,
                method=method,
                ffn_inputs=inputs,
                router_training=moe.RouterTrainConfig(epochs=args.router_epochs, seed=args.seed),
                seed=args.seed,
                copy=True,
            )
            losses = []
            if args.calibrate_steps:
                # routing as used at the first active fraction; other fractions reuse it
                ft = training.sst2_minilm(
                    model_dir=args.model_dir, learning_rate=args.calibrate_lr, warmup_ratio=0.1
                )
                rows = np.random.default_rng(args.seed + 1).permutation(len(full_train))
                ft_enc = data.encode_glue(
                    tokenizer,
                    data.select_examples(
                        full_train, np.sort(rows[: 32 * args.calibrate_steps + 64])
                    ),
                    64,
                    truncate=True,
                    vocab_size=vocab,
                )
                ft_batches = data.iterate_batches(ft_enc, 32, buckets, shuffle=True, seed=args.seed)
                losses = moe.calibrate_moefied(
                    moefied, ft_batches, args.calibrate_steps, ft, seed=args.seed
                )
            build_s = time.time() - t
            for k in ks:
                for site in moe.ffn_sites(moefied):
                    site.ffn.config = config.replace(top_k=k)
                acc = training.evaluate(moefied, dev, 64, buckets)["accuracy"]
                acc_cf = None
                if args.eval_capacity_factor:
                    for site in moe.ffn_sites(moefied):
                        site.ffn.config = config.replace(
                            top_k=k, capacity_factor=args.eval_capacity_factor
                        )
                    acc_cf = training.evaluate(moefied, dev, 64, buckets)["accuracy"]
                run = {
                    "num_experts": num_experts,
                    "top_k": k,
                    "active": k / num_experts,
                    "method": method,
                    "router": args.router,
                    "accuracy": acc,
                    "relative": acc / dense,
                    "capacity_factor": args.eval_capacity_factor,
                    "accuracy_with_capacity_factor": acc_cf,
                    "build_s": round(build_s, 1),
                    "calibrate_steps": args.calibrate_steps,
                    "calibrate_loss_last50": float(np.mean(losses[-50:])) if losses else None,
                    "captured_mass": [r.get("captured_mass") for r in reports],
                    "oracle_mass": [r.get("oracle_mass") for r in reports],
                }
                results["runs"].append(run)
                print(
                    f"E={num_experts:3d} k={k:2d} ({k / num_experts:6.2%}) {method:12s} "
                    f"acc {acc:.4f} ({acc / dense:.2%} of dense) build {build_s:.0f}s "
                    f"router mass L0 {run['captured_mass'][0]}",
                    flush=True,
                )
    results["total_s"] = round(time.time() - t0, 1)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
