"""Held-out calibration splits carved out of a training split.

Thresholds must never be chosen on the split that reports the result, nor on data a model
was fine-tuned on (its confidence there is inflated). `holdout_split` sets aside a fixed,
seeded random subset of a training split: fine-tuning uses the rest, calibration uses it.
"""

from __future__ import annotations

import numpy as np

from elang_jax.data._glue import GlueExamples


def holdout_split(n: int, holdout: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices), both sorted, disjoint, covering range(n)."""
    if not 0 <= holdout < n:
        raise ValueError(f"holdout must lie in [0, {n}), got {holdout}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


def select_examples(examples: GlueExamples, indices: np.ndarray) -> GlueExamples:
    """The examples at `indices`, in that order."""
    idx = np.asarray(indices, np.int64)
    return GlueExamples(
        text_a=[examples.text_a[i] for i in idx],
        text_b=None if examples.text_b is None else [examples.text_b[i] for i in idx],
        labels=None if examples.labels is None else examples.labels[idx],
    )
