"""CALM-style decoder exits on tiny random GPT-2 and T5 models: mean layers per generated
token and the share of tokens identical to full-model decoding, over thresholds.

    python eval/bench_calm.py [--json OUT.json]

A driver of `elang_jax.benchmarks.calm_sweep` (see there for the thresholds and why they
are small). Every run decodes the same prompts with the same model; only the threshold
changes, and +inf reproduces `generate` exactly.
"""

from __future__ import annotations

import argparse

from elang_jax import benchmarks as B
from elang_jax import jsonio


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    config = B.CalmEvalConfig(batch=args.batch, new_tokens=args.new_tokens, layers=args.layers)
    result = B.calm_sweep(config)
    print(B.format_calm(result))
    if args.json:
        jsonio.write_json(result, args.json)


if __name__ == "__main__":
    main()
