"""The dense FFN vs the MoE FFN at a share of experts active, each `MoEImpl`.

The core loop of eval/bench_moe.py, moved into the library: a random ReLU FFN of the
backbone's width, split into experts by balanced k-means on its input weights
(`SplitMethod.KMEANS`), each implementation built from it with the centroid-initialised
MLP router, timed on the same random tokens, each timed call right after an untimed one
of the same candidate. Every implementation is dropless; `moe_capacity_factor` adds the
CAPACITY implementation with that capacity factor (overflow dropped). Pallas is
compiled on GPU / TPU and skipped on CPU unless asked: interpret mode there is a
correctness path, not a speed path. An implementation that fails to build or compile on
this backend is reported in the notes and left out, so one kernel cannot sink the suite.

Shape vocabulary: n tokens, d width, f FFN width, e experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elang_jax.benchmarks._config import BenchConfig
from elang_jax.benchmarks._models import jit_module
from elang_jax.benchmarks._result import BenchResult, make_result
from elang_jax.flops import ffn_flops, moe_ffn_flops
from elang_jax.models import FeedForward
from elang_jax.moe import MoEConfig, MoEFeedForward, MoEImpl, SplitMethod, split
from elang_jax.timing import time_interleaved

BASELINE = "dense_ffn"


def bench_moe(config: BenchConfig) -> BenchResult:
    """Times each MoE implementation against the dense FFN it was made from."""
    enc = config.encoder_config()
    d, d_ff, n = enc.hidden_size, enc.intermediate_size, config.moe_tokens
    e, k = config.moe_experts, config.moe_top_k
    backend = jax.default_backend()
    ffn = FeedForward(d, d_ff, activation="relu", rngs=nnx.Rngs(config.seed))
    x = jnp.asarray(np.random.default_rng(config.seed).standard_normal((n, d)), jnp.float32)
    partition = split(SplitMethod.KMEANS, e, np.asarray(ffn.w_in.kernel[...]))

    def call(module, x):
        return module(x)

    dense = jit_module(ffn, call)
    candidates = {BASELINE: lambda: dense(x)}
    dense_flops = ffn_flops(n, d, d_ff)
    flop_speedups, info, notes = {}, {}, []
    for impl_name in config.moe_impls:
        impl = MoEImpl(impl_name)
        if impl is MoEImpl.PALLAS and backend == "cpu" and not config.pallas_on_cpu:
            notes.append("moe_pallas skipped on CPU (interpret mode); --pallas-on-cpu forces it")
            continue
        variants = {f"moe_{impl.value}": MoEConfig(num_experts=e, top_k=k, impl=impl)}
        if impl is MoEImpl.CAPACITY and config.moe_capacity_factor is not None:
            cf = config.moe_capacity_factor
            variants[f"moe_capacity_cf{cf:g}"] = variants[f"moe_{impl.value}"].replace(
                capacity_factor=cf
            )
        for name, moe_config in variants.items():
            try:
                moe = MoEFeedForward.from_dense(ffn, moe_config, partition)
                fn = jit_module(moe, call)
                jax.block_until_ready(fn(x))  # compile here, where a failure can be caught
                out = moe.apply(x)
            except Exception as err:  # noqa: BLE001 - a backend without this kernel skips it
                notes.append(f"{name} failed on {backend}: {type(err).__name__}: {err}"[:300])
                continue
            candidates[name] = lambda fn=fn: fn(x)
            sparse = moe_ffn_flops(n, d, d_ff, e, k, router=moe_config.router.value)
            router = sparse - ffn_flops(n, d, d_ff) * k // e
            # The DENSE implementation runs every expert and masks: it saves no FFN work.
            flop_speedups[name] = dense_flops / (
                dense_flops + router if impl is MoEImpl.DENSE else sparse
            )
            info[name] = dict(
                load_max_over_mean=float(np.max(np.asarray(out.expert_load)) * e),
                dropped=float(out.dropped_fraction),
            )
    timings = time_interleaved(candidates, config.rounds, untimed_before=1)
    args = dict(
        tokens=n,
        d_model=d,
        d_ff=d_ff,
        experts=e,
        top_k=k,
        active=k / e,
        impls=list(config.moe_impls),
        capacity_factor=config.moe_capacity_factor,
        rounds=config.rounds,
    )
    return make_result(
        "moe",
        timings,
        BASELINE,
        args,
        flop_speedups=flop_speedups,
        info=info,
        notes=tuple(notes),
    )
