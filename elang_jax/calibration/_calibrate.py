"""Threshold calibration shared by every method (cascades, exits, pruning, MoE).

A method describes its candidate settings as operating points: for each candidate m, which
calibration examples it gets right (`correct[m, n]`) and what it costs (`cost[m]`, mean
relative cost, e.g. FLOPs over the largest model's). `calibrate` then picks one for:
  (a) accuracy within `epsilon` of the reference (the top tier / full model),
  (b) the best accuracy under a compute `budget`,
  (c) a finite-sample guarantee: with probability >= 1 - delta over the calibration draw,
      the accuracy drop against the reference stays <= epsilon (Learn-then-Test with
      fixed-sequence testing and Clopper-Pearson bounds).
Candidates must be ordered from the most conservative (index 0, closest to the reference)
to the most aggressive: fixed-sequence testing relies on that order.

Thresholds are chosen on a calibration split; reporting on the same split is a mistake
the callers (train/, eval/) avoid by construction: they never pass the report split here.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import numpy as np
from scipy import stats


class Objective(enum.StrEnum):
    ACCURACY = "accuracy"  # (a) cheapest point within epsilon of the reference accuracy
    BUDGET = "budget"  # (b) most accurate point whose cost <= budget
    GUARANTEE = "guarantee"  # (c) cheapest point whose drop <= epsilon w.p. >= 1 - delta


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationTarget:
    """What to calibrate for; validated with messages that name the bad field."""

    objective: Objective = Objective.ACCURACY
    epsilon: float = 0.0  # tolerated accuracy drop (fraction, 0.005 = half a point)
    budget: float | None = None  # mean relative cost limit, for BUDGET
    delta: float = 0.1  # failure probability, for GUARANTEE

    def __post_init__(self):
        object.__setattr__(self, "objective", Objective(self.objective))
        if not (0.0 <= self.epsilon <= 1.0):
            raise ValueError(f"epsilon must lie in [0, 1], got {self.epsilon}")
        if not (0.0 < self.delta < 1.0):
            raise ValueError(f"delta must lie in (0, 1), got {self.delta}")
        if self.objective is Objective.BUDGET:
            if self.budget is None or not self.budget > 0 or math.isnan(self.budget):
                raise ValueError(f"the budget objective needs budget > 0, got {self.budget}")


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """The chosen candidate and how it scored on the calibration split."""

    index: int
    accuracy: float
    cost: float
    reference_accuracy: float
    upper_bound_drop: float | None = None  # Clopper-Pearson bound, GUARANTEE only
    setting: Any = None  # the method's threshold(s) for this candidate, if given


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided (1 - delta) upper confidence bound on a binomial rate from k of n."""
    if n == 0:
        return 1.0
    if k >= n:
        return 1.0
    return float(stats.beta.ppf(1.0 - delta, k + 1, n - k))


def calibrate(
    correct: np.ndarray,
    cost: np.ndarray,
    reference_correct: np.ndarray,
    target: CalibrationTarget,
    settings: Any = None,
) -> OperatingPoint:
    """Picks an operating point among candidates (see the module docstring).

    Args:
      correct: [m, n] bool, candidate m's correctness on calibration example n.
      cost: [m] mean relative cost of each candidate (or [m, n] per-example costs).
      reference_correct: [n] bool, the reference's correctness (top tier / full model).
      target: the objective.
      settings: optional sequence of length m (the thresholds), echoed in the result.
    """
    correct = np.asarray(correct, bool)
    if correct.ndim != 2:
        raise ValueError(f"correct must have shape [candidates, examples], got {correct.shape}")
    m, n = correct.shape
    cost = np.asarray(cost, np.float64)
    if cost.ndim == 2:
        cost = cost.mean(axis=1)
    if cost.shape != (m,):
        raise ValueError(f"cost must have shape [{m}] or [{m}, {n}], got {cost.shape}")
    reference_correct = np.asarray(reference_correct, bool)
    if reference_correct.shape != (n,):
        raise ValueError(f"reference_correct must have shape [{n}], got {reference_correct.shape}")
    if n == 0:
        raise ValueError("calibration needs at least one example")
    if np.isnan(cost).any():
        raise ValueError("cost holds NaN")
    acc = correct.mean(axis=1)
    ref_acc = float(reference_correct.mean())

    def point(i: int, bound: float | None = None) -> OperatingPoint:
        setting = None if settings is None else settings[i]
        return OperatingPoint(i, float(acc[i]), float(cost[i]), ref_acc, bound, setting)

    if target.objective is Objective.ACCURACY:
        ok = np.flatnonzero(acc >= ref_acc - target.epsilon - 1e-12)
        if ok.size == 0:
            return point(int(np.argmax(acc)))
        return point(int(ok[np.lexsort((-acc[ok], cost[ok]))[0]]))

    if target.objective is Objective.BUDGET:
        ok = np.flatnonzero(cost <= target.budget + 1e-12)
        if ok.size == 0:
            raise ValueError(
                f"no candidate meets budget {target.budget}; the cheapest costs {cost.min():.4f}"
            )
        return point(int(ok[np.lexsort((cost[ok], -acc[ok]))[0]]))

    # GUARANTEE: loss_i = 1[reference right and candidate wrong] bounds the accuracy drop
    # from above; test candidates in order and stop at the first whose bound fails.
    losses = (reference_correct[None, :] & ~correct).sum(axis=1)
    passed, bounds = [], {}
    for i in range(m):
        ub = clopper_pearson_upper(int(losses[i]), n, target.delta)
        if ub > target.epsilon:
            break
        passed.append(i)
        bounds[i] = ub
    if not passed:
        return point(0, clopper_pearson_upper(int(losses[0]), n, target.delta))
    best = min(passed, key=lambda i: (cost[i], -acc[i]))
    return point(best, bounds[best])


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling: the T > 0 minimising the NLL of softmax(logits / T).

    The NLL is unimodal in log T, so a golden-section search over log T in [-4, 4] is exact
    enough and needs no gradients.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [n, c] and labels [n], got {logits.shape} and {labels.shape}"
        )
    if not np.isfinite(logits).all():
        raise ValueError("logits hold NaN or infinity")

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(labels)), labels].mean())

    lo, hi = -4.0, 4.0
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(math.exp((lo + hi) / 2))
