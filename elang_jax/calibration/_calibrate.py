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
import numbers
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

    objective: Objective | str = Objective.ACCURACY  # a str is converted
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


def threshold_candidates(scores: np.ndarray, num: int | None = None) -> np.ndarray:
    """Thresholds to sweep over calibration `scores`, never equal to a score.

    A candidate lies halfway between two consecutive distinct scores, so every example's
    decision (`score >= threshold`) has the largest margin the data allows: a score that
    moves by a rounding error between two compiled programs (another batch or bucket shape,
    ~1e-7) keeps its side. A threshold exactly on a score would let it flip. (Two float32
    scores one ulp apart have no float32 number between them: compared in float32, their
    midpoint rounds onto one of them; no threshold can separate them robustly.)

    Worked example: scores [0.2, 0.5, 0.5, 0.9] give [+inf, 0.7, 0.35, -inf]; +inf keeps
    nothing (the most conservative), 0.7 keeps the 0.9 example, 0.35 also the two 0.5
    ones, and -inf keeps every example.

    Args:
      scores: any shape; NaN and infinite scores take no part in the midpoints.
      num: at most this many midpoints, evenly spaced in rank (quantiles of the midpoints);
        None: every midpoint.

    Returns:
      [m] float64 thresholds, descending: +inf, the midpoints, -inf.
    """
    if num is not None and (isinstance(num, bool) or not isinstance(num, numbers.Integral)):
        raise ValueError(f"num must be a positive int or None, got {num=!r}")
    if num is not None and num < 1:
        raise ValueError(f"num must be a positive int or None, got {num=!r}")
    s = np.asarray(scores, np.float64).reshape(-1)
    distinct = np.unique(s[np.isfinite(s)])
    # halves first: (a + b) / 2 would overflow for scores near the float64 maximum
    mids = distinct[:-1] / 2 + distinct[1:] / 2
    if num is not None and mids.size > num:
        mids = mids[np.unique(np.round(np.linspace(0, mids.size - 1, num)).astype(np.int64))]
    return np.concatenate([[np.inf], mids[::-1], [-np.inf]])


def _as_bool(values: Any, name: str) -> np.ndarray:
    """`values` as a bool array; NaN or anything but 0/1 is an error, not "correct".

    `np.asarray(x, bool)` would count NaN (and 0.5, 2, -1) as True, so a missing label or
    a probability passed by mistake would read as a right answer.
    """
    a = np.asarray(values)
    if a.dtype == bool:
        return a
    if not (np.issubdtype(a.dtype, np.number) and not np.iscomplexobj(a)):
        raise ValueError(f"{name} must be booleans (or 0/1), got dtype {a.dtype}")
    if a.size and not np.isin(a, (0, 1)).all():
        bad = a[~np.isin(a, (0, 1))].reshape(-1)[:5].tolist()
        raise ValueError(f"{name} must be booleans (or 0/1), got values such as {bad}")
    return a.astype(bool)


def _check_cost(cost: np.ndarray) -> None:
    if np.isnan(cost).any():
        raise ValueError("cost holds NaN")
    if (cost < 0).any():
        raise ValueError(f"cost must be >= 0, got a minimum of {cost.min()}")
    if np.isinf(cost).any():
        raise ValueError("cost holds infinity")


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
    correct = _as_bool(correct, "correct")
    if correct.ndim != 2:
        raise ValueError(f"correct must have shape [candidates, examples], got {correct.shape}")
    m, n = correct.shape
    if m == 0:
        raise ValueError("calibration needs at least one candidate, got correct of shape [0, n]")
    try:
        cost = np.asarray(cost, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"cost must be numbers, got {cost!r}") from None
    if cost.shape == (m, n):
        _check_cost(cost)
        cost = cost.mean(axis=1)
    if cost.shape != (m,):
        raise ValueError(f"cost must have shape [{m}] or [{m}, {n}], got {cost.shape}")
    reference_correct = _as_bool(reference_correct, "reference_correct")
    if reference_correct.shape != (n,):
        raise ValueError(f"reference_correct must have shape [{n}], got {reference_correct.shape}")
    if n == 0:
        raise ValueError("calibration needs at least one example")
    _check_cost(cost)
    if settings is not None and len(settings) != m:
        raise ValueError(f"settings must have one entry per candidate ({m}), got {len(settings)}")
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
        assert target.budget is not None  # CalibrationTarget requires it for BUDGET
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
    if logits.shape[0] == 0:
        raise ValueError("fit_temperature needs at least one example, got none")
    if logits.shape[1] < 2:
        raise ValueError(f"fit_temperature needs at least 2 classes, got logits {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits hold NaN or infinity")
    c = logits.shape[1]
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0)):
            raise ValueError(f"labels must be integer class ids, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    # a negative label would index from the end (-1 the last class) and fit the wrong class
    if labels.min() < 0 or labels.max() >= c:
        bad = labels[(labels < 0) | (labels >= c)][:5].tolist()
        raise ValueError(f"labels must lie in [0, {c}), got {bad}")

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
