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
correctness path, not a speed path). Rounds interleave the candidates so that a noisy,
shared machine slows them alike; each timed call follows an untimed one of the same
candidate; the median and the fastest round of each are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elang_jax.models import FeedForward
from elang_jax.moe import MoEConfig, MoEFeedForward, MoEImpl, SplitMethod, split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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


def compiled(module: nnx.Module):
    graphdef, state = nnx.split(module)
    fn = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda x: fn(state, x)


def real_ffn_and_inputs(model_dir: str, layer: int, tokens: int):
    """A fine-tuned model's FFN at `layer` and the SST-2 dev hidden states that enter it."""
    from elang_jax import data
    from elang_jax.hf import from_pretrained
    from elang_jax.moe import collect_ffn_inputs

    model = from_pretrained(model_dir, head="sequence_classification")
    tokenizer = data.load_tokenizer(model_dir)
    dev = data.encode_glue(tokenizer, data.read_glue("sst2", "dev"), 64, truncate=True)
    batches = data.iterate_batches(dev, 64, data.LengthBuckets((16, 32, 64)), shuffle=False)
    inputs = collect_ffn_inputs(model, batches)[layer]
    if len(inputs) < tokens:
        raise ValueError(f"SST-2 dev has {len(inputs)} tokens, fewer than --tokens {tokens}")
    ffn = model.encoder.layers[layer].ffn
    if ffn.activation != "relu":
        print(f"note: the model's FFN activation is {ffn.activation}, not relu")
    return ffn, inputs[:tokens]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = jax.default_backend()
    ffn = FeedForward(args.d_model, args.d_ff, activation="relu", rngs=nnx.Rngs(0))
    if args.model_dir:
        ffn, x = real_ffn_and_inputs(args.model_dir, args.layer, args.tokens)
    elif args.hidden:
        x = np.load(args.hidden)[: args.tokens]
    else:
        x = np.random.default_rng(0).standard_normal((args.tokens, args.d_model))
    x = jnp.asarray(x, jnp.float32)
    k = max(1, round(args.active * args.experts))
    partition = split(SplitMethod.KMEANS, args.experts, np.asarray(ffn.w_in.kernel[...]))
    candidates = {"dense_ffn": compiled(ffn)}
    loads = {}
    for name in args.impls:
        impl = MoEImpl(name)
        if impl is MoEImpl.PALLAS and backend == "cpu" and not args.pallas_on_cpu:
            print("skipping pallas on CPU (interpret mode); --pallas-on-cpu to force")
            continue
        config = MoEConfig(num_experts=args.experts, top_k=k, impl=impl)
        moe = MoEFeedForward.from_dense(ffn, config, partition)
        candidates[f"moe_{name}"] = compiled(moe)
        loads = np.asarray(moe.apply(x).expert_load)
        if impl is MoEImpl.CAPACITY and args.capacity_factor:
            dropping = MoEFeedForward.from_dense(
                ffn, config.replace(capacity_factor=args.capacity_factor), partition
            )
            candidates[f"moe_capacity_cf{args.capacity_factor:g}"] = compiled(dropping)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        jax.block_until_ready(fn(x))  # compile
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            # An untimed call first: the candidate before it (ragged_dot's large buffers)
            # leaves the allocator cold, which measured up to +15 ms on the next one.
            jax.block_until_ready(fn(x))
            t = time.perf_counter()
            jax.block_until_ready(fn(x))
            times[name].append(time.perf_counter() - t)
    medians = {name: float(np.median(v)) * 1e3 for name, v in times.items()}
    # On a shared machine the fastest round is the least disturbed one: report it too.
    fastest = {name: float(np.min(v)) * 1e3 for name, v in times.items()}
    dense = medians["dense_ffn"]
    print(
        f"backend {backend}; {args.tokens} tokens, d={args.d_model}, d_ff={args.d_ff}, "
        f"E={args.experts}, k={k} ({k / args.experts:.1%} active); expert load max/mean "
        f"{float(np.max(loads) * args.experts):.2f}"
        if len(loads)
        else ""
    )
    for name, ms in medians.items():
        best = fastest[name]
        print(
            f"{name:22s} median {ms:8.2f} ms  dense/this {dense / ms:5.2f}x   "
            f"fastest {best:8.2f} ms  dense/this {fastest['dense_ffn'] / best:5.2f}x"
        )
    if args.json:
        out = {
            "backend": backend,
            "device": str(jax.devices()[0]),
            "args": vars(args),
            "top_k": k,
            "expert_load": [float(v) for v in loads],
            "median_ms": medians,
            "speedup_vs_dense": {name: dense / ms for name, ms in medians.items()},
            "fastest_ms": fastest,
            "fastest_speedup_vs_dense": {
                name: fastest["dense_ffn"] / ms for name, ms in fastest.items()
            },
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
