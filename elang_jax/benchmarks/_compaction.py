"""The compaction core alone: a costly function on a routed share of the batch vs on all of it.

The costly function is the top `compaction_layers` layers of the encoder. `compact_apply`
packs the routed rows into the smallest static bucket that holds them, runs the layers on
that bucket only and scatters the results back; the buckets here are exactly the routed
shares, so the ideal speed-up is b / bucket and what the clock loses to it is the cost of
planning, gathering, scattering and `lax.switch`. Share 0 is the empty bucket: the layers
do not run at all, and the time left is the overhead alone.

Shape vocabulary: b batch rows, t padded length, d width, n bucket rows.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from elang_jax.benchmarks._config import BenchConfig
from elang_jax.benchmarks._models import build_classifier, jit_module, random_inputs
from elang_jax.benchmarks._result import BenchResult, make_result
from elang_jax.core import bucket_sizes, compact_apply
from elang_jax.models import BertModel
from elang_jax.timing import time_interleaved

BASELINE = "whole_batch"


def candidate_name(fraction: float) -> str:
    return f"subset_{100 * fraction:g}%"


def bench_compaction(config: BenchConfig) -> BenchResult:
    """Times the top layers on routed shares of the batch against the whole batch."""
    encoder = build_classifier(config).encoder
    b, num_layers = config.batch_size, config.num_layers
    start = num_layers - config.compaction_layers
    inputs = random_inputs(config)
    # Hidden states entering the costly layers: the embeddings stand in for the lower
    # layers' output (same shape and dtype, and the timing depends on nothing else).
    embed = jit_module(encoder, lambda m, ids, types: m.embed(ids, types))
    h = embed(inputs["input_ids"], inputs["token_type_ids"])
    mask = inputs["attention_mask"]
    buckets = bucket_sizes(b, config.compaction_fractions)

    def top_layers(model: BertModel, h: Float[Array, "n t d"], mask: Int[Array, "n t"]):
        return model.run_layers(h, mask, start, num_layers).last_hidden_state

    def compacted(
        model: BertModel,
        h: Float[Array, "b t d"],
        mask: Int[Array, "b t"],
        route: Bool[Array, " b"],
    ) -> Float[Array, "b t d"]:
        def fn(rows, valid):
            return top_layers(model, rows["h"], rows["mask"])

        out, _ = compact_apply(fn, route, dict(h=h, mask=mask), h, buckets)
        return out

    whole = jit_module(encoder, top_layers)
    # The route is an argument, not a constant: one program serves every share, and XLA
    # cannot specialise it to a known routing.
    routed = jit_module(encoder, compacted)
    rng = np.random.default_rng(config.seed)
    candidates = {BASELINE: lambda: whole(h, mask)}
    flop_speedups: dict[str, float] = {}
    info = {}
    for f in config.compaction_fractions:
        count = round(f * b)
        route = np.zeros(b, bool)
        route[rng.permutation(b)[:count]] = True  # scattered rows: the gather is real work
        route_j = jnp.asarray(route)
        name = candidate_name(f)
        candidates[name] = lambda route_j=route_j: routed(h, mask, route_j)
        bucket = min(n for n in buckets if n >= count)
        flop_speedups[name] = b / bucket if bucket else float("inf")
        info[name] = dict(routed=count, bucket=bucket, empty_bucket=bucket == 0)
    timings = time_interleaved(candidates, config.rounds)
    args = dict(
        batch_size=b,
        seq_len=config.seq_len,
        costly_layers=f"{start + 1}-{num_layers} of {num_layers}",
        fractions=list(config.compaction_fractions),
        buckets=list(buckets),
        rounds=config.rounds,
    )
    notes = ("flop_speedup is b / bucket rows (none for the empty bucket: nothing runs)",)
    return make_result(
        "compaction",
        timings,
        BASELINE,
        args,
        flop_speedups=flop_speedups,
        info=info,
        notes=notes,
    )
