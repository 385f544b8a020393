"""Times the dense FFN against the MoE FFN (each implementation) in one run.

Usage (from the repository root)::

    nice -n 10 python eval/bench_moe.py --json /tmp/bench_moe.json
    # on a GPU (Pallas compiled, not interpreted):
    python eval/bench_moe.py --impls dense ragged capacity pallas --json /tmp/bench_moe_gpu.json

Default shape: 4096 tokens of MiniLM width (d=384, d_ff=1536), 8 experts, 25% active. The
MoE layer is built from the dense FFN (random weights, ReLU) with the centroid-initialised
MLP router; tokens are random normal, or real FFN inputs from `--hidden file.npy` ([N d]).
Every implementation is dropless; `--capacity-factor C` adds the CAPACITY implementation
with that capacity factor (overflow dropped).
The Pallas implementation is skipped on CPU unless `--pallas-on-cpu` (interpret mode is a
correctness path, not a speed path). A driver of `elang_jax.benchmarks.bench_moe` (the
`moe` benchmark of `elang-jax bench`): rounds interleave the candidates so that a noisy,
shared machine slows them alike; each timed call follows an untimed one of the same
candidate; the median and the fastest round of each are reported, and `--json` writes the
suite's JSON format.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from elang_jax import benchmarks as B


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--d-ff", type=int, default=1536)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--active", type=float, default=0.25)
    p.add_argument("--impls", nargs="+", default=["dense", "ragged", "capacity", "pallas"])
    p.add_argument(
        "--capacity-factor",
        type=float,
        default=None,
        help="also time the CAPACITY impl with this capacity factor (it drops overflow)",
    )
    p.add_argument("--hidden", help="real FFN inputs, an [N d] .npy")
    p.add_argument(
        "--model-dir",
        help="a fine-tuned ReLU classifier: use its layer --layer FFN and the real hidden "
        "states entering it on SST-2 dev, instead of random weights and tokens",
    )
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--pallas-on-cpu", action="store_true")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = B.BenchConfig(
        moe_tokens=args.tokens,
        moe_experts=args.experts,
        moe_active=args.active,
        moe_impls=tuple(args.impls),
        moe_capacity_factor=args.capacity_factor,
        pallas_on_cpu=args.pallas_on_cpu,
        rounds=args.rounds,
    )
    ffn = tokens = None  # None: the benchmark's random FFN and tokens
    if args.model_dir:
        ffn, tokens = B.real_ffn_inputs(args.model_dir, args.layer, args.tokens)
    else:
        enc = config.encoder_config()
        if (args.d_model, args.d_ff) != (enc.hidden_size, enc.intermediate_size):
            ffn = B.random_ffn(args.d_model, args.d_ff, config.seed)
        if args.hidden:
            tokens = np.load(args.hidden)[: args.tokens]
    result = B.bench_moe(config, ffn=ffn, tokens=tokens)
    print(B.format_table(result))
    if args.json:
        B.write_json([result], args.json, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
