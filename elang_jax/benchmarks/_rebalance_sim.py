"""The rebalancing simulation behind eval/rebalance_sim.py (see its docstring): step time of
a data-parallel cascade step against the spread of hard inputs over the shards, with and
without rebalancing, from the analytic FLOP model and the step's bucket sizes; and a real
step on forced CPU devices that checks the outputs are equal.
"""

from __future__ import annotations

import numpy as np


def spread_counts(total: int, shards: int, rows: int, spread: float) -> np.ndarray:
    """[shards] escalated rows per shard: `spread` 0 = uniform, 1 = packed onto the first
    shards (each full before the next)."""
    uniform = np.full(shards, total / shards)
    packed = np.clip(total - rows * np.arange(shards), 0, rows).astype(np.float64)
    mix = spread * packed + (1.0 - spread) * uniform
    counts = np.floor(mix).astype(np.int64)
    # Hand out the rounding remainder to the shards with the largest fractional parts.
    rest = total - counts.sum()
    counts[np.argsort(-(mix - counts), kind="stable")[:rest]] += 1
    return np.minimum(counts, rows)


def bucket_of(count: int, buckets: tuple[int, ...]) -> int:
    return next(b for b in buckets if b >= count)


def simulate(args) -> list[dict]:
    from elang_jax import flops
    from elang_jax.core import bucket_sizes
    from elang_jax.engine import exchange_capacity
    from elang_jax.models import BertConfig

    swift, sup = BertConfig.minilm_l6(num_labels=2), BertConfig.bert_base(num_labels=2)
    f_swift = flops.classifier_flops(swift, args.length)
    f_super = flops.classifier_flops(sup, args.length)
    shards, rows = args.shards, args.batch // args.shards
    buckets = bucket_sizes(rows, args.fractions)
    cap = exchange_capacity(rows, shards)
    recv_buckets = tuple(sorted({*buckets, shards * cap}))
    total = round(args.escalated * args.batch)
    # Bytes each shard sends in the two all-to-alls: its inputs (ids, mask, types: int32
    # [t]) out, the results (logits [c] + score, float32) back, for every buffer slot.
    sent = shards * cap * (3 * args.length * 4 + (2 + 1) * 4)
    share = [total // shards + (i < total % shards) for i in range(shards)]
    balanced = max(rows * f_swift + bucket_of(c, recv_buckets) * f_super for c in share)
    ideal = rows * f_swift + total / shards * f_super

    def local(counts) -> float:
        return max(rows * f_swift + bucket_of(int(c), buckets) * f_super for c in counts)

    def skew(counts) -> float:
        return float(np.max(counts) / max(np.mean(counts), 1e-9))

    def row(spread, counts, local_flops, max_over_mean):
        return dict(
            spread=spread,
            counts=counts,
            max_over_mean=max_over_mean,
            local_gflop=local_flops / 1e9,
            balanced_gflop=balanced / 1e9,
            ideal_gflop=ideal / 1e9,
            speedup=local_flops / balanced,
            exchange_kib=sent / 1024,
        )

    table = []
    for spread in args.spreads:
        counts = spread_counts(total, shards, rows, spread)
        table.append(row(f"{spread:.2f}", counts.tolist(), local(counts), skew(counts)))
    # Hard inputs at random positions (no structure): the mean over draws.
    rng = np.random.RandomState(0)
    draws = [
        np.bincount(rng.permutation(args.batch)[:total] // rows, minlength=shards)
        for _ in range(args.draws)
    ]
    mean_counts = np.mean(draws, axis=0).round(1).tolist()
    mean_local = float(np.mean([local(d) for d in draws]))
    table.append(row("random", mean_counts, mean_local, float(np.mean([skew(d) for d in draws]))))
    return table


def print_table(args, table: list[dict]) -> None:
    print(
        f"{args.shards} data shards, batch {args.batch} ({args.batch // args.shards} rows per "
        f"shard), {args.escalated:.0%} escalated, length {args.length}; Swift = MiniLM-L6, "
        f"Super = BERT-base; buckets {args.fractions} of a shard's rows"
    )
    print("step time model = max over shards of the shard's FLOPs (GFLOP)")
    head = f"{'spread':>6} {'max/mean':>8} {'local':>8} {'rebal.':>8} {'ideal':>8} {'gain':>6}"
    print(head + "  escalated rows per shard")
    for r in table:
        print(
            f"{r['spread']:>6} {r['max_over_mean']:>8.2f} {r['local_gflop']:>8.1f} "
            f"{r['balanced_gflop']:>8.1f} {r['ideal_gflop']:>8.1f} {r['speedup']:>5.2f}x  "
            f"{r['counts']}"
        )
    print(
        f"rebalancing sends {table[0]['exchange_kib']:.0f} KiB per shard per escalated tier "
        "(inputs out, logits and scores back), whatever the spread"
    )


def check(args) -> None:
    """A real step on forced CPU devices: equal outputs, per-shard buckets."""
    import jax
    from flax import nnx

    from elang_jax.cascade import Cascade, Tier, TierConfig
    from elang_jax.models import BertConfig, BertForSequenceClassification

    if jax.device_count() < args.shards:
        print(f"check skipped: {jax.device_count()} devices < {args.shards} shards")
        return
    b, t, rows = args.check_batch, 8, args.check_batch // args.shards
    cfg = dict(num_labels=2, hidden_dropout=0.0, intermediate_size=32)
    tiers = [
        Tier(
            BertForSequenceClassification(BertConfig.tiny(num_layers=n, **cfg), rngs=nnx.Rngs(n)),
            TierConfig(name=f"tier{n}"),
        )
        for n in (1, 2)
    ]
    cascade = Cascade(tiers)
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 99, size=(b, t)).astype(np.int32)
    batch = dict(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=0 * ids)
    first = np.asarray(cascade.serving_step(b)(batch, thresholds=[np.inf]).scores[:, 0])
    order = np.argsort(first, kind="stable")  # least confident first
    total = round(args.escalated * b)
    # Midway between two scores: a sharded run computes the scores on other batch shapes,
    # equal to float tolerance, and a row sitting on the threshold could flip.
    threshold = float((first[order[total - 1]] + first[order[total]]) / 2)
    mesh = jax.make_mesh((args.shards,), ("data",), devices=jax.devices()[: args.shards])
    plain = cascade.serving_step(b)
    steps = {rb: cascade.serving_step(b, mesh=mesh, rebalance=rb) for rb in (False, True)}
    print(f"\ncheck on {args.shards} forced CPU devices: batch {b}, {total} escalated (tiny tiers)")
    print(f"{'spread':>6}  {'equal':>5}  Super bucket per shard (rows): local | rebalanced")
    for spread in args.spreads:
        counts = spread_counts(total, args.shards, rows, spread)
        # Place the `total` least confident rows on the shards as `counts` says.
        hard, easy = list(order[:total]), list(order[total:])
        perm = []
        for c in counts:
            perm += [hard.pop(0) for _ in range(c)] + [easy.pop(0) for _ in range(rows - c)]
        arranged = {k: v[np.asarray(perm)] for k, v in batch.items()}
        ref = plain(arranged, thresholds=[threshold])
        outs = {rb: s(arranged, thresholds=[threshold]) for rb, s in steps.items()}
        equal = all(
            np.array_equal(o.predictions, ref.predictions)
            and np.array_equal(o.tier, ref.tier)
            and np.allclose(o.logits, ref.logits, atol=1e-4, rtol=1e-5)
            for o in outs.values()
        )
        local, balanced = (np.asarray(outs[rb].buckets_used)[:, 1].tolist() for rb in (False, True))
        print(f"{spread:>6.2f}  {str(equal):>5}  {local} | {balanced}")
