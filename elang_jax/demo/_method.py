"""What every demo method is built from: the `Method` a builder returns, the `RowStats` its
decode gives, the calibration split every builder calibrates on (`Calibration`), and the
reference rows (a model alone).

Shape vocabulary: b batch rows, t padded length, c classes, v valid rows of a batch,
n examples, s packed segments.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jaxtyping import Bool, Float, Int
from numpy.typing import ArrayLike

from elang_jax import data, flops, pruning
from elang_jax.calibration import CalibrationTarget, OperatingPoint
from elang_jax.core import bucket_sizes, fitted_fractions
from elang_jax.demo._config import DemoConfig
from elang_jax.models import BertForSequenceClassification
from elang_jax.timing import logits_fn


@dataclasses.dataclass(frozen=True)
class RowStats:
    """What one batch's valid rows got.

    Attributes:
      predictions: [v] predicted labels.
      flops: [v] analytic FLOPs spent on each example at the batch's padded length.
      skipped: name ("inputs", "layers", "tokens", "experts") -> [v] share of that unit of
        work skipped for each example.
    """

    predictions: Int[np.ndarray, " v"]
    flops: Float[np.ndarray, " v"]
    skipped: dict[str, Float[np.ndarray, " v"]]


@dataclasses.dataclass
class Method:
    """A calibrated method, ready to run.

    Attributes:
      name: row label.
      kind: "reference", "cascade", "exits", "pruning", "moe" or "composed".
      forward: jitted `forward(batch)` on a padded batch of `eval.batch_size` rows.
      decode: `decode(batch, forward(batch)) -> RowStats` (host side, not timed).
      calibration: what calibration chose and scored on the calibration split (setting,
        accuracy, reference_accuracy, cost, target_met); empty for the reference rows. A
        builder given this dict as `known` skips calibrating and rebuilds from `setting`.
      diagnose: `diagnose(batches) -> (text, json)`: what explains the row's speed on the
        dev batches (the MoE row: each layer's expert load), printed and written with the
        table; None when there is nothing to add.
    """

    name: str
    kind: str
    forward: Callable[[data.Batch], Any]
    decode: Callable[[data.Batch, Any], RowStats]
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)
    diagnose: Callable[[Sequence[data.Batch]], tuple[str, Any]] | None = None


class Calibration:
    """The calibration split as every method sees it, computed on first use: a run whose
    calibration outcomes are all cached (see `Method.calibration`) never runs it.

    Attributes:
      encoded: the calibration examples.
      labels: [n] their labels.
      target: the calibration target.
      batches: their padded batches (sorted by length, every example once).
      super_logits: [n c] Super's logits on them (the reference of every method).
      swift_logits: [n c] Swift's.
    """

    def __init__(
        self,
        encoded: data.Encoded,
        config: DemoConfig,
        super_fn: Callable[[data.Batch], Any],
        swift_fn: Callable[[data.Batch], Any],
    ):
        assert encoded.labels is not None
        self.encoded = encoded
        self.labels: Int[np.ndarray, " n"] = encoded.labels
        self.target = CalibrationTarget(epsilon=config.calibration.epsilon)
        self._config = config
        self._fns = {"super": super_fn, "swift": swift_fn}

    @functools.cached_property
    def batches(self) -> list[data.Batch]:
        return make_batches(self.encoded, self._config)

    @functools.cached_property
    def super_logits(self) -> Float[np.ndarray, "n c"]:
        return dataset_outputs(self._fns["super"], self.batches, len(self.encoded))

    @functools.cached_property
    def swift_logits(self) -> Float[np.ndarray, "n c"]:
        return dataset_outputs(self._fns["swift"], self.batches, len(self.encoded))


def make_batches(encoded: data.Encoded, config: DemoConfig) -> list[data.Batch]:
    """Padded evaluation batches, sorted by length (every method runs these)."""
    buckets = data.LengthBuckets(config.eval.buckets)
    return list(
        data.iterate_batches(
            encoded, config.eval.batch_size, buckets, shuffle=False, sort_by_length=True
        )
    )


def dataset_outputs(
    fn: Callable[[data.Batch], Any], batches: Sequence[data.Batch], n: int
) -> Float[np.ndarray, "n c"]:
    """`fn`'s [b c] outputs over batches, valid rows only, back in dataset order."""
    idx, vals = [], []
    for b in batches:
        idx.append(b.index[b.valid])
        vals.append(np.asarray(fn(b))[b.valid])
    return data.restore_order(idx, vals, n)


def even_fractions(n: int) -> tuple[float, ...]:
    """Buckets of b/n, 2b/n, ..., b rows (and the empty one)."""
    return tuple(i / n for i in range(n + 1))


def fit_fractions(
    running: Bool[np.ndarray, "*s n"],
    batches: Sequence[data.Batch],
    batch_size: int,
    num_buckets: int,
    row_cost: Callable[[int], ArrayLike],
    given: Sequence[float] | None = None,
) -> tuple[float, ...]:
    """Bucket fractions fitted to the rows a step runs on the calibration batches
    (`elang_jax.core.fitted_fractions`), one set shared by every packed segment.

    The fit places the buckets for a binomial model of the counts, so on the calibration
    batches themselves it can execute more than the set it replaces: `given` (the
    configured set) is returned instead when it executes no more there.

    Args:
      running: [s n] (or [n], one segment) whether example i runs packed segment s (Super
        in a cascade; the layers up to each exit).
      batches: the calibration batches (every example once).
      batch_size: rows of the compiled step.
      num_buckets: nonzero bucket sizes, the full batch included.
      row_cost: padded length -> [s] what one row of each segment costs (FLOPs), so that
        long batches and costly segments weigh more.
      given: the fractions the step would use without fitting; None: always the fitted.
    """
    running = np.atleast_2d(np.asarray(running, bool))
    counts, rows, weights = [], [], []
    for b in batches:
        idx = b.index[b.valid]
        cost = np.asarray(row_cost(padded_length(b)), np.float64)
        if cost.shape != (len(running),):
            raise ValueError(f"row_cost gave {cost.shape} costs for {len(running)} segments")
        counts.append(running[:, idx].sum(1))
        rows.append(np.full(len(running), len(idx)))
        weights.append(len(idx) * cost)
    # [s nb] each, flattened: every (segment, batch) is one calibration count.
    c, r, w = (np.stack(x, 1).ravel() for x in (counts, rows, weights))
    fitted = fitted_fractions(c, r, batch_size, num_buckets, w)

    def executed(fractions: Sequence[float]) -> float:
        # Each (segment, batch) runs the smallest bucket holding its count, at its row cost.
        sizes = np.asarray(bucket_sizes(batch_size, fractions))
        return float((sizes[np.searchsorted(sizes, c)] * w / np.maximum(r, 1)).sum())

    if given is not None and executed(given) <= executed(fitted):
        return tuple(float(f) for f in given)
    return fitted


def summarize(op: OperatingPoint, setting: Any, epsilon: float) -> dict[str, Any]:
    return dict(
        setting=setting,
        accuracy=op.accuracy,
        reference_accuracy=op.reference_accuracy,
        cost=op.cost,
        target_met=bool(op.accuracy >= op.reference_accuracy - epsilon - 1e-12),
    )


def padded_length(batch: data.Batch) -> int:
    return int(batch.input_ids.shape[1])


def head_flops(cfg) -> int:
    return pruning.classifier_head_flops(cfg)


def reference(name: str, model: BertForSequenceClassification, fn=None) -> Method:
    """A model alone (Super or Swift): every example runs the whole model."""
    fn = fn or logits_fn(model)
    cfg = model.config

    def decode(batch, logits):
        v = batch.valid
        n = int(v.sum())
        return RowStats(
            predictions=np.asarray(logits).argmax(-1)[v],
            flops=np.full(n, float(flops.classifier_flops(cfg, padded_length(batch)))),
            skipped={},
        )

    return Method(name=name, kind="reference", forward=fn, decode=decode)
