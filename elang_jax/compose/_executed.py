"""The FLOPs a composed step executes: every segment at the rows of its static bucket.

The analytic cost (`ComposedClassifier.example_flops`) counts each example's own layers. The
compiled step runs the escalated rows of a batch on the smallest cascade bucket that holds
them, and inside a tier that exits early, each segment between exits on the smallest exit
bucket (of the tier's rows) that holds the rows still running; a tier that packs its own
rows (`Packing.PER_SEGMENT`) gets the whole batch and packs every segment, its first
included, into its exit buckets. Padding rows in a bucket cost as much as real ones.
Replaying those bucket choices batch by batch gives the work the step really does, which is
what its wall-clock time follows; calibration can minimise it instead of the analytic cost
(`calibrate_composed`), so that a candidate whose savings its buckets would round away is
not preferred for them.

Single device: a data-parallel step packs each shard's rows separately.

Shape names: n examples, nb batches, e a tier's exits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Bool, Float, Int

from elang_jax.compose._system import ComposedClassifier
from elang_jax.core import bucket_sizes


def _bucket_of(count: Int[np.ndarray, " nb"], rows: Int[np.ndarray, " nb"], fractions):
    """[nb] the smallest bucket of `bucket_sizes(rows, fractions)` holding `count` rows (0
    for a batch whose tier got no rows)."""
    out = np.zeros(count.shape, np.int64)
    for r in np.unique(rows):
        if r == 0:
            continue
        sizes = np.asarray(bucket_sizes(int(r), fractions))
        at = rows == r
        out[at] = sizes[np.searchsorted(sizes, count[at], side="left")]
    return out


class ExecutedCost:
    """Replays a composed system's bucket choices over batches of a fixed layout.

    Args:
      system: the composed system (its static structure: exit layers and buckets, cascade
        buckets, keep schedules; thresholds do not matter).
      batch: [n] which batch each example sat in (0 .. nb - 1).
      lengths: per tier, [nb] each batch's padded length.
      rows: the step's batch size (every batch is padded to it).
    """

    def __init__(
        self,
        system: ComposedClassifier,
        batch: Int[np.ndarray, " n"],
        lengths: Sequence[Int[np.ndarray, " nb"]],
        rows: int,
    ):
        if len(lengths) != system.num_tiers:
            raise ValueError(f"{system.num_tiers} tiers but batch lengths for {len(lengths)}")
        self.system = system
        self.batch = np.asarray(batch, np.int64)
        self.num_batches = int(len(lengths[0]))
        if self.batch.size and not 0 <= self.batch.min() <= self.batch.max() < self.num_batches:
            raise ValueError(f"batch ids must lie in [0, {self.num_batches}), got {self.batch}")
        per_batch = np.bincount(self.batch, minlength=self.num_batches)
        if per_batch.max(initial=0) > rows:
            raise ValueError(f"a batch holds {per_batch.max()} examples, more than rows={rows}")
        self.rows = int(rows)
        self.lengths = [np.asarray(t, np.int64) for t in lengths]
        # [k][e] -> [nb] the FLOPs of one row through segment e of tier k (its layers since
        # the previous exit, and the exit's head).
        self._segment = [self._segments(k) for k in range(system.num_tiers)]

    def _segments(self, k: int) -> list[Float[np.ndarray, " nb"]]:
        system = self.system
        layers_at = system.exit_layers(k)
        per_length = {}
        for t in np.unique(self.lengths[k]):
            total = [float(system.tier_flops(k, int(t), n, e)) for e, n in enumerate(layers_at)]
            per_length[int(t)] = np.diff([0.0, *total])
        return [
            np.array([per_length[int(t)][e] for t in self.lengths[k]])
            for e in range(len(layers_at))
        ]

    def _count(self, rows: Bool[np.ndarray, " n"]) -> Int[np.ndarray, " nb"]:
        return np.bincount(self.batch[rows], minlength=self.num_batches)

    def cascade_rows(self, escalated: Bool[np.ndarray, " n"]) -> Int[np.ndarray, " nb"]:
        """[nb] the cascade bucket the `escalated` examples of each batch are packed into."""
        fractions = self.system.config.cascade_bucket_fractions
        rows = np.full(self.num_batches, self.rows)
        return _bucket_of(self._count(escalated), rows, fractions)

    def tier_rows(self, k: int, escalated: Bool[np.ndarray, " n"]) -> Int[np.ndarray, " nb"]:
        """[nb] the rows tier k >= 1 gets per batch: the cascade bucket of its `escalated`
        examples, or the whole batch when it packs its own rows segment by segment."""
        if self.system.config.packs_own(k):
            return np.full(self.num_batches, self.rows)
        return self.cascade_rows(escalated)

    def tier(
        self,
        k: int,
        running: Bool[np.ndarray, " n"],
        exit_index: Int[np.ndarray, " n"],
        rows: Int[np.ndarray, " nb"],
    ) -> Float[np.ndarray, " nb"]:
        """[nb] tier k's executed FLOPs per batch: it gets `rows` rows per batch (tier 0: the
        batch size; later tiers: `tier_rows`) holding the `running` examples, each of which
        leaves at `exit_index`."""
        rows = np.asarray(rows, np.int64)
        tier = self.system.config.tiers[k]
        segment = self._segment[k]
        if tier.exits is None:  # one pass over every row the tier got
            return rows * segment[0]
        total = np.zeros(self.num_batches)
        for e, count in enumerate(self.segment_counts(k, running, exit_index)):
            total += _bucket_of(count, rows, tier.exits.bucket_fractions) * segment[e]
        return total

    def segment_counts(
        self, k: int, running: Bool[np.ndarray, " n"], exit_index: Int[np.ndarray, " n"]
    ) -> Int[np.ndarray, "e nb"]:
        """[e nb] how many of the `running` examples of each batch run tier k's segment e
        (those leaving at exit e or later)."""
        exit_index = np.asarray(exit_index)
        return np.stack(
            [self._count(running & (exit_index >= e)) for e in range(len(self._segment[k]))]
        )

    def segment_flops(self, k: int) -> Float[np.ndarray, "e nb"]:
        """[e nb] the FLOPs of one row through tier k's segment e in each batch (one
        segment, the whole tier, for a tier without exits)."""
        return np.stack(self._segment[k])

    def per_batch(self, mask: Bool[np.ndarray, " n"] | None = None) -> Int[np.ndarray, " nb"]:
        """[nb] how many of the examples `mask` selects (default: every one) sit in each
        batch."""
        return self._count(np.ones(self.batch.shape, bool) if mask is None else np.asarray(mask))

    def total(self, exit_index: Int[np.ndarray, "n k"]) -> Float[np.ndarray, " nb"]:
        """[nb] the step's executed FLOPs per batch, from each example's per-tier exit index
        (-1 where the tier did not run, as in `ComposedOutput.exit_index`)."""
        ran = np.asarray(exit_index) >= 0
        rows = np.full(self.num_batches, self.rows)
        total = np.zeros(self.num_batches)
        for k in range(self.system.num_tiers):
            if k > 0:
                rows = self.tier_rows(k, ran[:, k])
            total += self.tier(k, ran[:, k], np.asarray(exit_index)[:, k], rows)
        return total
