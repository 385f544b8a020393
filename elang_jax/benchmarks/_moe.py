"""The dense FFN vs the MoE FFN at a share of experts active, each `MoEImpl`.

Run by `elang-jax bench` and by eval/bench_moe.py (which may pass its own FFN and tokens:
other widths, a fine-tuned model's FFN and the hidden states entering it, or the demo's
MoEfied Super with its trained routers: `demo_moefied`, `demo_ffn_inputs`). By default a
random ReLU FFN of the backbone's width, split into experts by balanced k-means on its input weights
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

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from elang_jax.benchmarks._config import BenchConfig
from elang_jax.benchmarks._models import jit_module
from elang_jax.benchmarks._result import BenchResult, make_result
from elang_jax.checkpoints import cache_dir
from elang_jax.flops import ffn_flops, moe_ffn_flops, router_flops
from elang_jax.models import FeedForward
from elang_jax.moe import MoEConfig, MoEFeedForward, MoEImpl, RouterKind, SplitMethod, split
from elang_jax.timing import time_interleaved

BASELINE = "dense_ffn"


def random_ffn(d_model: int, d_ff: int, seed: int = 0) -> FeedForward:
    """A random ReLU FFN [d f] (the benchmark's default, at the backbone's width)."""
    return FeedForward(d_model, d_ff, activation="relu", rngs=nnx.Rngs(seed))


def random_tokens(tokens: int, d_model: int, seed: int = 0) -> Float[np.ndarray, "n d"]:
    """[n d] standard normal FFN inputs."""
    return np.random.default_rng(seed).standard_normal((tokens, d_model))


def real_ffn_inputs(
    model_dir: str, layer: int, tokens: int, task: str = "sst2"
) -> tuple[FeedForward, Float[np.ndarray, "n d"]]:
    """A fine-tuned classifier's FFN at `layer` and the first `tokens` hidden states that
    enter it on the task's dev split (padding removed)."""
    from elang_jax import data
    from elang_jax.hf import from_pretrained
    from elang_jax.moe import collect_ffn_inputs

    model = from_pretrained(model_dir, head="sequence_classification")
    tokenizer = data.load_tokenizer(model_dir)
    dev = data.encode_glue(tokenizer, data.read_glue(task, "dev"), 64, truncate=True)
    batches = data.iterate_batches(dev, 64, data.LengthBuckets((16, 32, 64)), shuffle=False)
    inputs = collect_ffn_inputs(model, batches)[layer]
    if len(inputs) < tokens:
        raise ValueError(f"{task} dev has {len(inputs)} tokens, fewer than the {tokens} asked")
    ffn = model.encoder.layers[layer].ffn  # pyright: ignore[reportAttributeAccessIssue]
    return ffn, inputs[:tokens]


def _demo_paths(cache: str | os.PathLike[str] | None, task: str) -> tuple[Path, Path]:
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    demo = root / "demo" / task if (root / "demo" / task).is_dir() else root
    super_dir = demo / "super" / "final"
    found = sorted((demo / "derived").glob("moe-*.npz"), key=lambda p: p.stat().st_mtime)
    if not (super_dir / "config.json").is_file() or not found:
        raise FileNotFoundError(
            f"no MoEfied Super under {demo}: run `elang-jax demo` first (it caches Super in "
            "super/final and its MoE experts and routers in derived/moe-*.npz)"
        )
    return super_dir, found[-1]


def demo_moefied(
    cache: str | os.PathLike[str] | None = None,
    task: str = "sst2",
    *,
    top_k: int = 2,
    impl: MoEImpl | str = MoEImpl.TILED,
) -> tuple[nnx.Module, nnx.Module]:
    """The demo's fine-tuned Super and its MoEfied copy, read from the demo cache.

    Args:
      cache: the cache root ($ELANG_JAX_CACHE or ~/.cache/elang_jax by default) or a demo
        directory (`<root>/demo/<task>`); the newest `derived/moe-*.npz` is used.
      task: the demo's task.
      top_k: experts run per token.
      impl: the MoE implementation of the copy.

    Returns:
      (Super, the MoEfied Super): every FFN a `MoEFeedForward` with the demo's experts and
      trained MLP routers.
    """
    from elang_jax.hf import from_pretrained
    from elang_jax.moe import ffn_sites

    super_dir, params = _demo_paths(cache, task)
    dense = from_pretrained(str(super_dir), head="sequence_classification")
    moefied = from_pretrained(str(super_dir), head="sequence_classification")
    with np.load(params) as saved:
        arrays = dict(saved)
    # The demo caches the MoE FFNs alone ("ffns/<i>/..."), or the whole model once MoEfication's
    # parameter calibration has fine-tuned every parameter but the routers.
    whole = "ffns/0/w_in" not in arrays
    prefix = "encoder/layers/{}/ffn/" if whole else "ffns/{}/"
    for i, site in enumerate(ffn_sites(moefied)):
        ffn = site.ffn
        assert isinstance(ffn, FeedForward)  # a freshly loaded dense model
        e = arrays[prefix.format(i) + "w_in"].shape[0]
        config = MoEConfig(num_experts=e, top_k=top_k, impl=impl, router=RouterKind.MLP)
        site.ffn = MoEFeedForward.from_dense(ffn, config)
    target = moefied if whole else nnx.List([site.ffn for site in ffn_sites(moefied)])
    for name, var in nnx.to_flat_state(nnx.state(target, nnx.Param)):
        key = "/".join(map(str, name))
        var[...] = jnp.asarray(arrays[key if whole else f"ffns/{key}"])
    return dense, moefied


def demo_ffn_inputs(
    model: nnx.Module, task: str = "sst2", tokenizer_dir: str | None = None
) -> list[np.ndarray]:
    """[N d] hidden states entering each FFN of `model` on the task's dev split (padding
    removed), batches of 64 in the demo's length buckets."""
    from elang_jax import data
    from elang_jax.moe import collect_ffn_inputs

    if tokenizer_dir is None:
        raise ValueError("tokenizer_dir is required (the fine-tuned model's directory)")
    tokenizer = data.load_tokenizer(tokenizer_dir)
    dev = data.encode_glue(tokenizer, data.read_glue(task, "dev"), 64, truncate=True)
    batches = data.iterate_batches(dev, 64, data.LengthBuckets((16, 32, 64)), shuffle=False)
    return collect_ffn_inputs(model, batches)


def bench_moe(
    config: BenchConfig,
    *,
    ffn: FeedForward | None = None,
    tokens: Float[Array | np.ndarray, "n d"] | None = None,
    moe: MoEFeedForward | None = None,
    result_name: str = "moe",
) -> BenchResult:
    """Times each MoE implementation against the dense FFN it was made from.

    Args:
      config: experts, share active, implementations, rounds; `moe_tokens` and the
        backbone's widths unless overridden.
      ffn: the dense FFN to split (default `random_ffn` at the backbone's width).
      tokens: [n d] the FFN inputs (default `random_tokens(config.moe_tokens, d)`).
      moe: an already MoEfied `ffn` (its experts and trained router, e.g. the demo's):
        each implementation runs a copy of it instead of a k-means split of `ffn`.
      result_name: the result's name.
    """
    given = ",".join(
        name for name, v in (("ffn", ffn), ("tokens", tokens), ("moe", moe)) if v is not None
    )
    if ffn is None:
        enc = config.encoder_config()
        ffn = random_ffn(enc.hidden_size, enc.intermediate_size, config.seed)
    d, d_ff = ffn.w_in.in_features, ffn.w_in.out_features
    e, k = config.moe_experts, config.moe_top_k
    if d_ff % e:
        raise ValueError(f"the FFN width {d_ff} is not divisible by {e} experts")
    if tokens is None:
        tokens = random_tokens(config.moe_tokens, d, config.seed)
    x = jnp.asarray(tokens, jnp.float32)
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"tokens must be [n {d}], got {x.shape}")
    n = int(x.shape[0])
    backend = jax.default_backend()
    if moe is not None and (moe.config.num_experts, moe.config.top_k) != (e, k):
        raise ValueError(
            f"moe has {moe.config.num_experts} experts, top-{moe.config.top_k}; the config "
            f"asks for {e}, top-{k}"
        )
    partition = (
        None if moe is not None else split(SplitMethod.KMEANS, e, np.asarray(ffn.w_in.kernel[...]))
    )

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
                if moe is not None:
                    layer = nnx.clone(moe)
                    layer.config = moe.config.replace(
                        impl=impl, capacity_factor=moe_config.capacity_factor
                    )
                else:
                    layer = MoEFeedForward.from_dense(ffn, moe_config, partition)
                fn = jit_module(layer, call)
                jax.block_until_ready(fn(x))  # compile here, where a failure can be caught
                out = layer.apply(x)
            except Exception as err:  # noqa: BLE001 - a backend without this kernel skips it
                notes.append(f"{name} failed on {backend}: {type(err).__name__}: {err}"[:300])
                continue
            candidates[name] = lambda fn=fn: fn(x)
            router_kind = RouterKind(layer.config.router).value
            sparse = moe_ffn_flops(n, d, d_ff, e, k, router=router_kind)
            router = router_flops(n, d, e, router_kind)
            # The DENSE implementation runs every expert and masks: it saves no FFN work.
            flop_speedups[name] = dense_flops / (
                dense_flops + router if impl is MoEImpl.DENSE else sparse
            )
            info[name] = dict(
                load_max_over_mean=float(np.max(np.asarray(out.expert_load)) * e),
                dropped=float(out.dropped_fraction),
            )
    timings = time_interleaved(candidates, config.rounds, untimed_before=1)
    args: dict[str, Any] = dict(
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
    if given:  # what the caller supplied instead of the random FFN and tokens
        args.update(given=given, activation=ffn.activation)
    return make_result(
        result_name,
        timings,
        BASELINE,
        args,
        flop_speedups=flop_speedups,
        info=info,
        notes=tuple(notes),
    )
