"""Times the dense FFN against the MoE FFN (each implementation) in one run.

Usage (from the repository root)::

    nice -n 10 python eval/bench_moe.py --json /tmp/bench_moe.json
    # on a GPU (Pallas compiled, not interpreted):
    python eval/bench_moe.py --impls dense ragged capacity pallas --json /tmp/bench_moe_gpu.json

Default shape: 4096 tokens of MiniLM width (d=384, d_ff=1536), 8 experts, 25% active. The
MoE layer is built from the dense FFN (random weights, ReLU) with the centroid-initialised
MLP router; tokens are random normal, or real FFN inputs from `--hidden file.npy` ([N d]).
The Pallas implementation is skipped on CPU unless `--pallas-on-cpu` (interpret mode is a
correctness path, not a speed path). Rounds interleave the candidates so that a noisy,
shared machine slows them alike; the median of each is reported.
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
    p.add_argument("--capacity-factor", type=float, default=None, help="None: dropless")
    p.add_argument("--hidden", help="real FFN inputs, an [N d] .npy")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--pallas-on-cpu", action="store_true")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def compiled(module: nnx.Module):
    graphdef, state = nnx.split(module)
    fn = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda x: fn(state, x)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = jax.default_backend()
    ffn = FeedForward(args.d_model, args.d_ff, activation="relu", rngs=nnx.Rngs(0))
    if args.hidden:
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
        config = MoEConfig(
            num_experts=args.experts, top_k=k, impl=impl, capacity_factor=args.capacity_factor
        )
        moe = MoEFeedForward.from_dense(ffn, config, partition)
        candidates[f"moe_{name}"] = compiled(moe)
        loads = np.asarray(moe.apply(x).expert_load)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for fn in candidates.values():
        jax.block_until_ready(fn(x))  # compile
    for _ in range(args.rounds):
        for name, fn in candidates.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(x))
            times[name].append(time.perf_counter() - t)
    medians = {name: float(np.median(v)) * 1e3 for name, v in times.items()}
    dense = medians["dense_ffn"]
    print(
        f"backend {backend}; {args.tokens} tokens, d={args.d_model}, d_ff={args.d_ff}, "
        f"E={args.experts}, k={k} ({k / args.experts:.1%} active); expert load max/mean "
        f"{float(np.max(loads) * args.experts):.2f}"
        if len(loads)
        else ""
    )
    for name, ms in medians.items():
        print(f"{name:14s} {ms:9.2f} ms   dense/this = {dense / ms:5.2f}x")
    if args.json:
        out = {
            "backend": backend,
            "device": str(jax.devices()[0]),
            "args": vars(args),
            "top_k": k,
            "expert_load": [float(v) for v in loads],
            "median_ms": medians,
            "speedup_vs_dense": {name: dense / ms for name, ms in medians.items()},
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
