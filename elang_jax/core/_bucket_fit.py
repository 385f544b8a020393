"""Bucket sizes fitted to how many rows a step routes, instead of evenly spaced ones.

The compaction core rounds a batch's routed count up to the next static bucket, so the
rows it runs beyond the routed ones are waste. Which sizes waste least depends on how the
count is distributed: a cascade that escalates 25-40% of a batch of 64 gains nothing from
buckets at 8 or 16 rows and much from buckets between 16 and 26. Given that distribution
(from a calibration split), the fewest-rows-on-average sizes follow from a small dynamic
programme over the candidate sizes.

Worked example, batch 8, calibration batches that routed 1 and 2 of their 8 rows, at most
one bucket besides the full batch: a row is routed with rate 1/8 or 2/8, so the count is a
mixture of two binomials with mean 1.5. Even buckets (0, 4, 8) run 3.17 rows on average;
the fitted ones (0, 3, 8) run 2.65, since counts above 3 are rare enough to pay for the
full batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float
from numpy.typing import ArrayLike
from scipy import stats


def count_distribution(
    counts: ArrayLike,
    rows: ArrayLike,
    batch: int,
    weights: ArrayLike | None = None,
) -> Float[np.ndarray, " batch_plus_1"]:
    """P(count = k), k = 0..batch, of the routed rows in a batch of `batch`.

    Each calibration batch i routed `counts[i]` of its `rows[i]` rows; a future batch is
    taken to route each row independently at one of these rates, chosen with probability
    proportional to `weights` (default: `rows`, every calibration row counts once). This
    keeps the spread between batches (a hard batch escalates more) that a single pooled
    rate would lose.
    """
    counts_a = np.asarray(counts, dtype=np.int64)
    rows_a = np.asarray(rows, dtype=np.int64)
    if counts_a.ndim != 1 or counts_a.shape != rows_a.shape or not len(counts_a):
        raise ValueError(
            "counts and rows must be non-empty and of one length, got shapes "
            f"{counts_a.shape} and {rows_a.shape}"
        )
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if (rows_a < 1).any() or (counts_a < 0).any() or (counts_a > rows_a).any():
        raise ValueError(
            "need rows >= 1 and 0 <= counts <= rows for every calibration batch, got "
            f"counts {counts_a.tolist()} of rows {rows_a.tolist()}"
        )
    w = rows_a.astype(np.float64) if weights is None else np.asarray(weights, np.float64)
    if w.shape != counts_a.shape or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"weights must be finite, >= 0, not all 0 and one per batch, got {w.tolist()}"
        )
    k = np.arange(batch + 1)
    # [batches, batch + 1]: one binomial per calibration batch's rate.
    pmf = stats.binom.pmf(k[None, :], batch, (counts_a / rows_a)[:, None])
    return (w / w.sum()) @ pmf


def fit_buckets(probs: ArrayLike, num_buckets: int) -> tuple[int, ...]:
    """The bucket sizes, at most `num_buckets` besides 0, that run the fewest rows on average.

    Args:
      probs: P(count = k) for k = 0..batch (`count_distribution`).
      num_buckets: how many nonzero sizes, the full batch included, may compile.

    Returns:
      (0, s_1, ..., batch), sorted: for a count k the step runs the smallest s >= k. Ties
      are broken towards fewer buckets (fewer programs to compile).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or len(p) < 2 or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"probs must be finite, >= 0 and of length batch + 1 >= 2, got {p}")
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    batch = len(p) - 1
    # Only a size some count can need is worth a bucket; the full batch is always one.
    cand = [k for k in range(1, batch) if p[k] > 0] + [batch]
    # mass[j]: P(count <= cand[j]) with mass[-1] = P(count = 0) (the empty bucket).
    cum = np.cumsum(p)
    mass = {j: cum[c] for j, c in enumerate(cand)}
    mass[-1] = p[0]

    def cost(i: int, j: int) -> float:
        # Counts in (cand[i], cand[j]] run cand[j] rows.
        return cand[j] * (mass[j] - mass[i])

    m = len(cand)
    # best[b][j]: least expected rows for counts <= cand[j] using b buckets, the top one cand[j].
    inf = float("inf")
    best = [[inf] * m for _ in range(num_buckets + 1)]
    back = [[-1] * m for _ in range(num_buckets + 1)]
    for j in range(m):
        best[1][j] = cost(-1, j)
    for b in range(2, num_buckets + 1):
        for j in range(m):
            for i in range(j):
                c = best[b - 1][i] + cost(i, j)
                if c < best[b][j] - 1e-12:
                    best[b][j], back[b][j] = c, i
    top = m - 1
    # Fewest buckets within rounding of the least cost.
    least = min(best[b][top] for b in range(1, num_buckets + 1))
    b = next(b for b in range(1, num_buckets + 1) if best[b][top] <= least + 1e-12)
    sizes, j = [], top
    while j >= 0 and b >= 1:
        sizes.append(cand[j])
        j, b = back[b][j], b - 1
    return (0, *sorted(sizes))


def expected_rows(probs: ArrayLike, sizes: Sequence[int]) -> float:
    """Rows a step runs on average with these bucket sizes (the count rounded up)."""
    p = np.asarray(probs, dtype=np.float64)
    s = sorted(int(x) for x in sizes)
    batch = len(p) - 1
    if not s or s[-1] < batch:
        raise ValueError(f"the largest bucket must hold the batch of {batch}, got {tuple(s)}")
    run = np.asarray(s)[np.searchsorted(s, np.arange(batch + 1))]
    return float(p @ run)


def fitted_fractions(
    counts: ArrayLike,
    rows: ArrayLike,
    batch: int,
    num_buckets: int,
    weights: ArrayLike | None = None,
) -> tuple[float, ...]:
    """`fit_buckets` on the calibration counts, as fractions of the batch.

    Fractions are what the cascade and exit configs take (`bucket_sizes` turns them back
    into the same sizes for this batch).
    """
    sizes = fit_buckets(count_distribution(counts, rows, batch, weights), num_buckets)
    return tuple(s / batch for s in sizes)
