"""Self-speculative decoding on a small byte-level GPT-2 trained here, plain greedy against
draft-and-verify at batch 1, 8 and 64, with and without LayerSkip's drafting recipe.

    python eval/speculative_gpt2.py [--steps 250] [--json eval/results/speculative_gpt2_cpu.json]

Trains (or reuses, from ~/.cache/elang_jax/speculative/) two 6-layer, 256-wide GPT-2s on
the shipped text (SST-2 training sentences, both sides of the WMT test sets): one with the
plain LM loss, one with the early-exit loss and layer dropout. Then, in one run, decodes
held-out SST-2 dev prompts greedily and self-speculatively, checks that the tokens are
identical, and times both with `elang_jax.timing`.
"""

from __future__ import annotations

import argparse

from elang_jax import jsonio
from elang_jax.benchmarks._speculative import (
    CascadeEvalConfig,
    SpeculativeEvalConfig,
    cascade_curve,
    format_cascade,
    format_speculative,
    speculative_table,
)
from elang_jax.speculative._trained import RECIPES, train_or_load


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-length", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--draft-layers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--k", type=int, nargs="+", default=[3])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--cascade",
        action="store_true",
        help="also the Swift (2 layers, plain) to Super (the plain 6-layer model) cascade",
    )
    p.add_argument("--skip-table", action="store_true", help="only the cascade")
    p.add_argument("--cascade-batch", type=int, default=64, help="held-out rows of the cascade")
    p.add_argument(
        "--epsilons",
        type=float,
        nargs="+",
        default=[0.005, 0.01, 0.02, 0.05],
        help="per-token disagreement targets of the lossy cascade's calibration",
    )
    args = p.parse_args(argv)
    models, logs = {}, {}
    for name in RECIPES:
        models[name], log = train_or_load(
            name, args.steps, args.train_batch, args.train_length, args.lr
        )
        if log is not None:
            logs[name] = log
    swift = None
    if args.cascade:
        swift, log = train_or_load(
            "plain", args.steps, args.train_batch, args.train_length, args.lr, layers=2
        )
        if log is not None:
            logs["swift_2l"] = log
    if args.train_only:
        return
    result: dict = {"training": logs, "args": vars(args)}
    if not args.skip_table:
        config = SpeculativeEvalConfig(
            batches=tuple(args.batches),
            draft_layers=tuple(args.draft_layers),
            ks=tuple(args.k),
            new_tokens=args.new_tokens,
            rounds=args.rounds,
        )
        result.update(speculative_table(models, config))
        print(format_speculative(result), flush=True)
    if swift is not None:
        cascade = cascade_curve(
            models["plain"],
            swift,
            CascadeEvalConfig(
                k=max(args.k),
                batch=args.cascade_batch,
                epsilons=tuple(args.epsilons),
                new_tokens=args.new_tokens,
                rounds=args.rounds,
            ),
        )
        result["cascade"] = cascade
        print(format_cascade(cascade))
    if args.json:
        jsonio.write_json(result, args.json)


if __name__ == "__main__":
    main()
