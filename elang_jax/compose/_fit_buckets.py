"""A composed step's buckets fitted to the rows its thresholds route on a calibration split.

Evenly spaced exit buckets waste rows where the counts do not fall: a Super that gets a
third of the batch and lets a fifth of it leave at each exit rounds 21 running rows up to
24 or 32, every segment, every batch. Once the thresholds are chosen, the calibration
split's replay says how many rows run each segment of each batch; `core.fitted_fractions`
places the same number of buckets where those counts fall, weighting each segment by what
one of its rows costs (a padding row of a 4-layer segment at length 64 costs more than one
of the exit head). The predictions do not change (an input's output does not depend on the
rows it is packed with), only the rows the step runs, so the calibration stays valid.

Fitted: the exit buckets of the first tier and of every tier that packs its own rows
(`Packing.PER_SEGMENT`), which are fractions of the whole batch, and the cascade buckets
when a later tier is packed into them. The exit buckets of a tier nested in a cascade
bucket are fractions of that bucket, whose size varies from batch to batch; they stay.

Shape names: n examples, nb batches, e a tier's exits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from elang_jax.compose._calibrate import (
    TierOutcomes,
    _executed_cost,
    executed_flops,
    replay_exit_index,
)
from elang_jax.compose._config import ComposedConfig
from elang_jax.compose._system import ComposedClassifier
from elang_jax.core import bucket_sizes, fitted_fractions


def _nonzero_sizes(rows: int, fractions: Sequence[float]) -> int:
    return len({s for s in bucket_sizes(rows, fractions) if s > 0})


def fit_composed_buckets(
    system: ComposedClassifier,
    outcomes: Sequence[TierOutcomes],
    config: ComposedConfig | None = None,
    num_buckets: int | None = None,
) -> ComposedConfig:
    """`config` (default: `system`'s) with its buckets fitted to the calibration split.

    Args:
      system: the composed system (its modules, exit layers and FLOP model).
      outcomes: per tier, its outcomes over the calibration batches (`tier_outcomes`, under
        the same keep schedule and experts as `config`).
      config: the thresholds whose routing the buckets are fitted to.
      num_buckets: nonzero bucket sizes per fitted set, the full batch included; default:
        as many as the set has now, so the step compiles as many branches as before.

    Returns:
      the same config with the fitted sets replaced (see the module docstring for which),
      or `config` unchanged when its own buckets execute fewer FLOPs on the calibration
      batches.
    """
    config = given = system.config if config is None else config
    if num_buckets is not None and num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    replay = _executed_cost(system, outcomes)
    exit_index = replay_exit_index(system, outcomes, config)
    ran = exit_index >= 0
    batch = replay.rows
    examples = replay.per_batch()
    # Batches that held no example (none in `tier_outcomes`'s layout) carry no rate.
    has = examples > 0

    def fit(counts, weights, fractions) -> tuple[float, ...]:
        # counts, weights: [s nb] per segment (or tier) and batch.
        n = num_buckets or _nonzero_sizes(batch, fractions)
        rows = np.broadcast_to(examples, counts.shape)[:, has].ravel()
        weights = (weights * examples)[:, has].ravel()
        return fitted_fractions(counts[:, has].ravel(), rows, batch, n, weights)

    cascade_counts, cascade_weights = [], []
    for k, tier in enumerate(config.tiers):
        if k > 0 and not config.packs_own(k):
            # Packed into a cascade bucket: its escalated rows, weighted by a row's
            # cost through the whole tier.
            cascade_counts.append(replay.per_batch(ran[:, k]))
            cascade_weights.append(replay.segment_flops(k).sum(0))
        if tier.exits is None or not (k == 0 or config.packs_own(k)):
            continue
        counts = replay.segment_counts(k, ran[:, k], exit_index[:, k])
        fitted = fit(counts, replay.segment_flops(k), tier.exits.bucket_fractions)
        exits = dataclasses.replace(tier.exits, bucket_fractions=fitted)
        config = config.with_tier(k, exits=exits)
    if cascade_counts:
        fitted = fit(
            np.stack(cascade_counts), np.stack(cascade_weights), config.cascade_bucket_fractions
        )
        config = config.replace(cascade_bucket_fractions=fitted)
    # The fit minimises the rows expected of batches like these; on these very batches it
    # can lose to the given sets by a row, and then the given ones stay.
    cost = [
        executed_flops(ComposedClassifier(system.modules, c), outcomes) for c in (given, config)
    ]
    return config if cost[1] <= cost[0] else given
