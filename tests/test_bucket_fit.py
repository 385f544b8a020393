"""Bucket sizes fitted to the routed counts: exact optimum, fewer rows than even buckets."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from elang_jax.core import (
    bucket_sizes,
    count_distribution,
    expected_rows,
    fit_buckets,
    fitted_fractions,
)


def test_worked_example():
    # The module docstring's example: batch 8, calibration batches routing 1 and 2 of 8.
    p = count_distribution([1, 2], [8, 8], 8)
    assert p.shape == (9,)
    np.testing.assert_allclose(p.sum(), 1.0)
    fitted = fit_buckets(p, 2)
    assert float(np.arange(9) @ p) == pytest.approx(1.5)
    assert fitted == (0, 3, 8)
    assert expected_rows(p, fitted) == pytest.approx(2.65, abs=0.005)
    assert expected_rows(p, (0, 4, 8)) == pytest.approx(3.17, abs=0.005)
    assert expected_rows(p, fitted) < expected_rows(p, (0, 4, 8))


def _brute(p, num_buckets):
    batch = len(p) - 1
    best = None
    for n in range(num_buckets):
        for inner in itertools.combinations(range(1, batch), n):
            sizes = (0, *inner, batch)
            c = expected_rows(p, sizes)
            if best is None or c < best[0] - 1e-12:
                best = (c, sizes)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    batch = int(rng.integers(5, 12))
    p = rng.dirichlet(np.ones(batch + 1) * 0.5)
    p[rng.integers(1, batch)] = 0.0  # a count nobody reaches is never a bucket
    p /= p.sum()
    for num_buckets in (1, 2, 3, 4):
        fitted = fit_buckets(p, num_buckets)
        cost, _ = _brute(p, num_buckets)
        assert len(fitted) - 1 <= num_buckets
        assert fitted[0] == 0 and fitted[-1] == batch
        assert expected_rows(p, fitted) == pytest.approx(cost, rel=1e-9)


def test_ties_take_fewer_buckets():
    # Every batch routes all or nothing: the full batch alone is optimal.
    p = np.zeros(9)
    p[0], p[8] = 0.5, 0.5
    assert fit_buckets(p, 4) == (0, 8)


def test_mixture_mean():
    counts, rows = [2, 10, 15], [40, 40, 20]
    p = count_distribution(counts, rows, 64)
    # Mean of the mixture: batch times the row-weighted mean rate.
    rate = np.dot(rows, np.divide(counts, rows)) / np.sum(rows)
    assert float(np.arange(65) @ p) == pytest.approx(64 * rate)
    w = count_distribution(counts, rows, 64, weights=[0, 0, 1])
    assert float(np.arange(65) @ w) == pytest.approx(64 * 15 / 20)


def test_fitted_beats_even_buckets():
    # 24 calibration batches of 64, each escalating 20-45% of its rows, 8 buckets: the
    # fitted sizes sit where the counts are and waste about half the rows that
    # evenly spaced ones do.
    rng = np.random.default_rng(1)
    rates = rng.uniform(0.2, 0.45, 24)
    counts = rng.binomial(64, rates)
    p = count_distribution(counts, [64] * 24, 64)
    fitted = fit_buckets(p, 8)
    even = bucket_sizes(64, tuple(i / 8 for i in range(9)))
    mean = float(np.arange(65) @ p)
    waste_fit = expected_rows(p, fitted) - mean
    waste_even = expected_rows(p, even) - mean
    assert len(fitted) <= 9
    assert waste_fit < 0.6 * waste_even, (fitted, waste_fit, waste_even)


@pytest.mark.parametrize("batch", [1, 7, 25, 64, 100, 512])
def test_fractions_round_trip(batch):
    rng = np.random.default_rng(batch)
    rows = rng.integers(1, batch + 1, 6)
    counts = rng.integers(0, rows + 1)
    fractions = fitted_fractions(counts, rows, batch, 5)
    sizes = fit_buckets(count_distribution(counts, rows, batch), 5)
    assert bucket_sizes(batch, fractions) == sizes


def test_bad_input():
    with pytest.raises(ValueError, match="counts <= rows"):
        count_distribution([5], [4], 8)
    with pytest.raises(ValueError, match="one length"):
        count_distribution([1, 2], [4], 8)
    with pytest.raises(ValueError, match="weights"):
        count_distribution([1], [4], 8, weights=[-1.0])
    with pytest.raises(ValueError, match="batch must be >= 1"):
        count_distribution([1], [4], 0)
    with pytest.raises(ValueError, match="num_buckets"):
        fit_buckets(np.full(5, 0.2), 0)
    with pytest.raises(ValueError, match="finite"):
        fit_buckets(np.array([0.5, np.nan, 0.5]), 2)
    with pytest.raises(ValueError, match="must hold the batch"):
        expected_rows(np.full(5, 0.2), (0, 2))
