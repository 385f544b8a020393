"""Times the dense FFN against the MoE FFN (each implementation) in one run.

Usage (from the repository root)::

    nice -n 10 python eval/bench_moe.py --json /tmp/bench_moe.json
    # the demo's cache elsewhere ($ELANG_JAX_CACHE, or ~/.cache/elang_jax by default):
    python eval/bench_moe.py --demo-cache /path/to/cache --json /tmp/bench_moe_real.json
    # on a GPU (Pallas compiled, not interpreted):
    python eval/bench_moe.py --impls dense ragged capacity pallas tiled --json /tmp/gpu.json

Default shape: 4096 tokens of MiniLM width (d=384, d_ff=1536), 8 experts, 25% active. The
MoE layer is built from the dense FFN (random weights, ReLU) with the centroid-initialised
MLP router; tokens are random normal, or real FFN inputs from `--hidden file.npy` ([N d]).
When the demo's cache holds a MoEfied Super (after `elang-jax demo`), a second benchmark
follows in the same run, on real hidden states: that model (its k-means experts and trained
MLP routers) on SST-2 dev; every layer's expert load is printed (the busiest expert's share of the
assignments), and the layer with the busiest expert is timed, each implementation on a
copy of that MoE layer, the dense FFN being Super's own.
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
    p.add_argument("--impls", nargs="+", default=["dense", "ragged", "capacity", "pallas", "tiled"])
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
    p.add_argument(
        "--demo-cache",
        help="where the demo's MoEfied Super is, for the real-hidden-states benchmark: a "
        "cache root or its demo/<task> directory (default: $ELANG_JAX_CACHE or "
        "~/.cache/elang_jax, skipped with a note when it has none)",
    )
    p.add_argument("--no-real", action="store_true", help="random tokens only")
    p.add_argument("--task", default="sst2", help="the demo's task (with --demo-cache)")
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
    results = [B.bench_moe(config, ffn=ffn, tokens=tokens)]
    print(B.format_table(results[0]), flush=True)
    if not (args.no_real or args.model_dir or args.hidden):
        real = _bench_demo(args, config)
        if real is not None:
            results.append(real)
            print(B.format_table(real))
    if args.json:
        B.write_json(results, args.json, config)
    return 0


def _bench_demo(args: argparse.Namespace, config: B.BenchConfig) -> B.BenchResult | None:
    """The demo's MoEfied Super: every layer's expert load, then its worst layer timed."""
    from elang_jax.benchmarks._moe import _demo_paths, demo_ffn_inputs, demo_moefied
    from elang_jax.moe import expert_load, ffn_sites, format_expert_load

    try:
        super_dir, _ = _demo_paths(args.demo_cache, args.task)
    except FileNotFoundError as err:
        if args.demo_cache:  # asked for explicitly: an error
            raise SystemExit(str(err)) from None
        print(f"\nnote: real hidden states skipped: {err}")
        return None
    dense, moefied = demo_moefied(args.demo_cache, args.task, top_k=config.moe_top_k)
    inputs = demo_ffn_inputs(moefied, args.task, tokenizer_dir=str(super_dir))
    loads = expert_load(moefied, ffn_inputs=inputs)
    print(f"\nexpert load of the demo's MoEfied Super on {args.task} dev (top-{config.moe_top_k}):")
    print(format_expert_load(loads), flush=True)
    worst = max(loads, key=lambda load: load.busiest_share).layer
    tokens = inputs[worst][: args.tokens]
    if len(tokens) < args.tokens:
        raise SystemExit(f"{args.task} dev has {len(tokens)} tokens, fewer than --tokens")
    print(f"timing layer {worst}, the busiest expert's layer, on {len(tokens)} of its tokens\n")
    return B.bench_moe(
        config,
        ffn=ffn_sites(dense)[worst].ffn,  # pyright: ignore[reportArgumentType]
        tokens=tokens,
        moe=ffn_sites(moefied)[worst].ffn,  # pyright: ignore[reportArgumentType]
        result_name=f"moe_real_layer{worst}",
    )


if __name__ == "__main__":
    sys.exit(main())
