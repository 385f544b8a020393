"""Cascade operating points for `elang_jax.calibration.calibrate`.

Given every tier's score and correctness on a calibration split (all tiers run offline on
every calibration example), simulate each threshold setting: an example stops at the first
tier whose score reaches its threshold, and costs the sum of the tiers it went through.
"""

from __future__ import annotations

import itertools

import numpy as np

from elang_jax.calibration import (
    CalibrationTarget,
    OperatingPoint,
    calibrate,
    threshold_candidates,
)


def simulate(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """[n] index of the answering tier for each example, for N-1 thresholds."""
    n, n_tiers = scores.shape[0], len(thresholds) + 1
    tier = np.full(n, n_tiers - 1, np.int64)
    open_ = np.ones(n, bool)
    for k, t in enumerate(thresholds):
        stop = open_ & (scores[:, k] >= t)
        tier[stop] = k
        open_ &= ~stop
    return tier


def cascade_candidates(
    scores: np.ndarray,
    correct: np.ndarray,
    tier_costs: np.ndarray,
    grid_size: int = 64,
) -> tuple[np.ndarray, np.ndarray, list[tuple[float, ...]]]:
    """Candidate thresholds ordered from the most conservative (everything to the top tier).

    Args:
      scores: [n, N] each tier's score on each example (the last column is unused).
      correct: [n, N] whether each tier is right on each example.
      tier_costs: [N] or [n, N] cost of running each tier (per example), relative to
        anything consistent (e.g. FLOPs / top tier FLOPs).
      grid_size: for two tiers every midpoint between consecutive distinct scores is a
        candidate; beyond that, at most this many midpoints per tier (spread over their
        quantiles) form a product grid. Each axis also holds +inf and -inf.

    Returns:
      correct [m, n], mean cost [m], settings (a tuple of N-1 thresholds per candidate).
    """
    scores = np.asarray(scores, np.float64)
    correct = np.asarray(correct, bool)
    n, n_tiers = correct.shape
    costs = np.broadcast_to(np.asarray(tier_costs, np.float64), (n, n_tiers))
    cum = np.cumsum(costs, axis=1)  # an example answered by tier k paid tiers 0..k
    # Thresholds lie between observed scores (`threshold_candidates`), never on one, so a
    # score that differs by a rounding error at serving time keeps its calibrated tier.
    num = None if n_tiers == 2 else grid_size
    axes = [threshold_candidates(scores[:, k], num) for k in range(n_tiers - 1)]
    settings, corr, cost = [], [], []
    for th in itertools.product(*axes):
        tier = simulate(scores, np.asarray(th))
        settings.append(tuple(float(t) for t in th))
        corr.append(correct[np.arange(n), tier])
        cost.append(cum[np.arange(n), tier].mean())
    cost_arr = np.asarray(cost)
    order = np.argsort(-cost_arr, kind="stable")
    return np.asarray(corr)[order], cost_arr[order], [settings[i] for i in order]


def calibrate_thresholds(
    scores: np.ndarray,
    correct: np.ndarray,
    tier_costs: np.ndarray,
    target: CalibrationTarget,
    grid_size: int = 64,
) -> OperatingPoint:
    """Thresholds for a cascade on a calibration split; `.setting` holds them.

    The reference is the top tier run on everything.
    """
    corr, cost, settings = cascade_candidates(scores, correct, tier_costs, grid_size)
    return calibrate(corr, cost, np.asarray(correct)[:, -1], target, settings)


def calibrate_two_tier(
    swift_logits: np.ndarray,
    super_logits: np.ndarray,
    labels: np.ndarray,
    kind: str,
    target: CalibrationTarget,
    *,
    swift_cost: np.ndarray | float,
    temperature: float = 1.0,
) -> OperatingPoint:
    """The Swift tier's threshold of a Swift -> Super cascade on a calibration split.

    Both models run offline on every calibration example; `.setting[0]` of the result is the
    threshold (keep Swift's answer where its score >= threshold).

    Args:
      swift_logits: [n c] Swift's logits on the calibration examples.
      super_logits: [n c] Super's logits on the same examples.
      labels: [n] their labels.
      kind: Swift's confidence score (`elang_jax.routing.Score`).
      target: what to calibrate for; the reference is Super alone.
      swift_cost: Swift's cost relative to Super's ([n] per example, or one number), e.g.
        the ratio of their FLOPs at each example's length. Super costs 1.
      temperature: Swift's score temperature.
    """
    from elang_jax.routing import score

    swift_logits = np.asarray(swift_logits, np.float32)
    super_logits = np.asarray(super_logits, np.float32)
    labels = np.asarray(labels)
    n = labels.shape[0]
    if swift_logits.shape[0] != n or super_logits.shape != swift_logits.shape:
        raise ValueError(
            f"logits must both be [{n}, c], got {swift_logits.shape} and {super_logits.shape}"
        )
    s = np.asarray(score(kind, swift_logits, temperature), np.float64)
    correct = np.stack([swift_logits.argmax(-1) == labels, super_logits.argmax(-1) == labels], 1)
    ratio = np.broadcast_to(np.asarray(swift_cost, np.float64), (n,))
    costs = np.stack([ratio, np.ones(n)], 1)
    return calibrate_thresholds(np.stack([s, np.zeros_like(s)], 1), correct, costs, target)
