"""Backbone forward: JAX (jit) against transformers' PyTorch, same inputs, one run.

    python eval/bench_backbone.py [--repeats 21] [--json OUT.json]

Times all-MiniLM-L6-v2 at batch 32 x 64 tokens and batch 1 x 64 tokens, prints the
PyTorch/JAX time ratio, the achieved GFLOP/s (analytic FLOP model) and the machine's
measured f32 matmul rate through XLA. A driver of
`elang_jax.benchmarks.backbone_against_torch`: the library's backbone benchmark (also run by
`elang-jax bench`) with PyTorch as an extra candidate timed interleaved with JAX. Runs
unchanged on a GPU (the PyTorch side then uses CUDA if torch sees it).
"""

from __future__ import annotations

import argparse

from elang_jax import benchmarks as B
from elang_jax import jsonio


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    result = B.backbone_against_torch(args.repeats)
    print(B.format_backbone_against_torch(result))
    if args.json:
        jsonio.write_json(result, args.json)


if __name__ == "__main__":
    main()
