"""Running a calibrated demo method over a dataset: predictions, FLOPs and work skipped.

Shape vocabulary: n examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jaxtyping import Int

from elang_jax import data
from elang_jax.demo._method import Method


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One method over one dataset.

    Attributes:
      predictions: [n] in dataset order.
      flops: total analytic FLOPs over the dataset's examples.
      skipped: name -> mean share of that unit of work skipped.
    """

    predictions: Int[np.ndarray, " n"]
    flops: float
    skipped: dict[str, float]


def evaluate(
    method: Method,
    batches: Sequence[data.Batch],
    n: int,
    progress: Callable[[int], Any] | None = None,
) -> Evaluation:
    """Runs `method` over padded batches holding n examples (the first pass also compiles)."""
    idx, preds, cost = [], [], 0.0
    skipped: dict[str, list[np.ndarray]] = {}
    for b in batches:
        stats = method.decode(b, method.forward(b))
        idx.append(b.index[b.valid])
        preds.append(stats.predictions)
        cost += float(np.sum(stats.flops))
        for k, x in stats.skipped.items():
            skipped.setdefault(k, []).append(np.asarray(x, float))
        if progress is not None:
            progress(1)
    return Evaluation(
        predictions=data.restore_order(idx, preds, n),
        flops=cost,
        skipped={k: float(np.concatenate(v).mean()) for k, v in skipped.items()},
    )
