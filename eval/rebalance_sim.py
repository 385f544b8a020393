"""When does rebalancing escalated rows across data shards pay? Step time against the spread
of hard inputs over the shards, with and without rebalancing.

    nice -n 10 python eval/rebalance_sim.py                       # the table + the check
    nice -n 10 python eval/rebalance_sim.py --shards 8 --batch 512 --escalated 0.25 \
        --length 128 --no-check

A data-parallel cascade step (`Cascade.serving_step(b, mesh=...)`) lasts as long as its
slowest data shard: every shard runs the Swift model on its rows and the Super model on the
smallest bucket holding its own escalated rows. The step-time model is therefore
max over shards of (Swift FLOPs on the shard's rows + Super FLOPs on its bucket), from the
analytic FLOP model (`elang_jax.flops.classifier_flops`) and the step's bucket sizes
(`elang_jax.core.bucket_sizes`). With `rebalance=True` the escalated rows are first dealt
out evenly (one all-to-all each way, a fixed capacity of ceil(rows / shards) rows per pair of
shards), so every shard's bucket holds ceil(escalated / shards) rows at most.

The spread goes from uniform (every shard holds the same share of hard inputs) to packed
(the hard inputs fill shard 0, then shard 1, ...): spread s mixes the two, s * packed +
(1 - s) * uniform, rounded to whole rows. The last row ("random") places the hard inputs at
random positions of the batch and averages the step time over `--draws` placements (its
counts column is the mean count per shard, sorted by shard).

`--check` (default on) also runs a real cascade step of two tiny BERT tiers on `--shards`
forced CPU devices at each spread, with and without rebalancing: outputs equal example by
example, and the buckets each shard ran (`buckets_used`) are printed. Forced CPU devices
share the same cores: this checks correctness and the communication pattern, never speed.
"""

from __future__ import annotations

import argparse
import os

from elang_jax.benchmarks._rebalance_sim import check, print_table, simulate


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--escalated", type=float, default=0.25, help="fraction escalated")
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--fractions", default="0,0.125,0.25,0.5,1", help="bucket fractions")
    p.add_argument("--spreads", default="0,0.25,0.5,0.75,1")
    p.add_argument("--draws", type=int, default=200, help="random placements averaged")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--check-batch", type=int, default=64)
    args = p.parse_args(argv)
    args.fractions = tuple(float(x) for x in args.fractions.split(","))
    args.spreads = tuple(float(x) for x in args.spreads.split(","))
    if args.batch % args.shards or args.check_batch % args.shards:
        p.error("--batch and --check-batch must be multiples of --shards")
    if args.check:
        # Forced CPU devices, read when the backend starts (the first computation).
        flag = f"--xla_force_host_platform_device_count={args.shards}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    table = simulate(args)
    print_table(args, table)
    if args.check:
        check(args)
    return table


if __name__ == "__main__":
    main()
