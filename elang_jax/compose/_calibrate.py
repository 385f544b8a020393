"""Calibrating a composed system's thresholds jointly, offline.

Each tier runs once over the calibration split with no example leaving early
(`tier_outcomes`: every exit's logits under the tier's pruning and MoE settings). From those,
`candidate_grid` replays the compiled step's decisions exactly (exit by exit, then tier by
tier) for every combination of candidate thresholds, with each example's analytic FLOPs,
and `calibrate_composed` hands the grid to the shared `elang_jax.calibration.calibrate`
(for the guarantee target, only its Pareto front: see there).
Static choices (the ACC rate, the active experts) change the program: calibrate one system
per choice and pool their grids (`calibrate` over the concatenation).

Shape names: e exits, n examples, c classes, m candidates.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from jaxtyping import Bool, Float, Int

from elang_jax import data
from elang_jax.calibration import (
    CalibrationTarget,
    Objective,
    OperatingPoint,
    calibrate,
    threshold_candidates,
)
from elang_jax.compose._config import ComposedConfig
from elang_jax.compose._system import ComposedClassifier
from elang_jax.exits import ExitPolicy, exit_scores, simulate_exits
from elang_jax.routing import score


@dataclasses.dataclass(frozen=True)
class TierOutcomes:
    """One tier over a dataset with no early exit.

    Attributes:
      logits: [e n c] float32, every exit's logits (one exit for a tier without exits).
      lengths: [n] each example's padded length (its batch's), which sets ACC's counts and
        the FLOPs.
    """

    logits: Float[np.ndarray, "e n c"]
    lengths: Int[np.ndarray, " n"]


def tier_outcomes(
    system: ComposedClassifier,
    k: int,
    batches: Sequence[data.Batch],
    n: int,
    progress: Callable[[int], Any] | None = None,
) -> TierOutcomes:
    """Tier k of `system` over padded batches holding n examples (each once)."""
    idx, logits, lengths = [], [], []
    for b in batches:
        inputs = dict(
            input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids
        )
        lg = np.asarray(system.exit_logits(k, inputs), np.float32)
        idx.append(b.index[b.valid])
        logits.append(np.moveaxis(lg[:, b.valid], 1, 0))  # [e v c] -> [v e c]
        lengths.append(np.full(int(b.valid.sum()), b.input_ids.shape[1]))
        if progress is not None:
            progress(1)
    per_example = data.restore_order(idx, logits, n)  # [n e c]
    return TierOutcomes(
        logits=np.moveaxis(per_example, 0, 1),
        lengths=data.restore_order(idx, lengths, n).astype(np.int64),
    )


@dataclasses.dataclass(frozen=True)
class _TierRun:
    """A tier's decisions at one exit threshold (everything the cascade needs)."""

    predictions: np.ndarray
    scores: np.ndarray
    flops: np.ndarray


def _exit_candidates(logits, policy: ExitPolicy | None, num: int) -> list[float]:
    if policy is None or logits.shape[0] == 1:
        return [math.inf]
    if policy is ExitPolicy.PATIENCE:
        raise ValueError("composed calibration sweeps thresholds: use a score-based exit policy")
    return _between(exit_scores(logits, policy)[:-1].ravel(), num)


def _between(scores: np.ndarray, num: int) -> list[float]:
    """+inf, at most `num` thresholds between consecutive distinct scores (spread over their
    quantiles), and -inf, descending (`elang_jax.calibration.threshold_candidates`): a
    threshold equal to a score would let float differences between two compiled programs
    flip that example's decision."""
    return [float(t) for t in threshold_candidates(scores, num)]


def _tier_runs(
    system: ComposedClassifier, k: int, out: TierOutcomes, thresholds: Sequence[float]
) -> list[_TierRun]:
    tier = system.config.tiers[k]
    layers_at = system.exit_layers(k)
    n = out.logits.shape[1]
    cost_of: dict[tuple[int, int], float] = {}

    def cost(length: int, e: int) -> float:
        if (length, e) not in cost_of:
            cost_of[(length, e)] = float(system.tier_flops(k, length, layers_at[e], e))
        return cost_of[(length, e)]

    runs = []
    policy = tier.exit_policy
    scores = None if policy is None else exit_scores(out.logits, policy)
    for th in thresholds:
        if policy is None:
            e = np.zeros(n, np.int64)
            preds = out.logits[0].argmax(-1)
        else:
            d = simulate_exits(out.logits, layers_at, policy, threshold=th, scores=scores)
            e, preds = d.exit_index, d.predictions
        at_exit = out.logits[e, np.arange(n)]
        runs.append(
            _TierRun(
                predictions=preds,
                scores=np.asarray(score(tier.route.score, at_exit, tier.route.temperature)),
                flops=np.array([cost(int(t), int(x)) for t, x in zip(out.lengths, e, strict=True)]),
            )
        )
    return runs


@dataclasses.dataclass(frozen=True)
class CandidateGrid:
    """Every combination of candidate thresholds, replayed offline.

    Attributes:
      predictions: [m n] each candidate's predictions.
      flops: [m] total analytic FLOPs over the examples.
      configs: [m] the system's config with each candidate's thresholds.
    """

    predictions: Int[np.ndarray, "m n"]
    flops: Float[np.ndarray, " m"]
    configs: list[ComposedConfig]


def candidate_grid(
    system: ComposedClassifier, outcomes: Sequence[TierOutcomes], num: int = 12
) -> CandidateGrid:
    """Replays the composed step for every combination of candidate thresholds per tier exit
    policy and per cascade decision: +inf, at most `num` midpoints between calibration
    scores (spread over their quantiles) and -inf (`threshold_candidates`)."""
    cfg = system.config
    if len(outcomes) != system.num_tiers:
        raise ValueError(f"{system.num_tiers} tiers but outcomes for {len(outcomes)}")
    exit_grid = [
        _exit_candidates(o.logits, t.exit_policy, num)
        for o, t in zip(outcomes, cfg.tiers, strict=True)
    ]
    runs = [_tier_runs(system, k, o, exit_grid[k]) for k, o in enumerate(outcomes)]
    cascade_grid = []
    for k in range(system.num_tiers - 1):
        s = np.concatenate([r.scores for r in runs[k]])
        cascade_grid.append(_between(s, num))
    preds, costs, configs = [], [], []
    for exit_choice in itertools.product(*(range(len(g)) for g in exit_grid)):
        chosen = [runs[k][i] for k, i in enumerate(exit_choice)]
        for cascade in itertools.product(*cascade_grid):
            pred = chosen[-1].predictions.copy()
            flops = chosen[0].flops.copy()
            pending = np.ones(pred.shape, bool)
            for k, th in enumerate(cascade):
                take = pending & (chosen[k].scores >= np.float32(th))
                pred[take] = chosen[k].predictions[take]
                pending &= ~take
                flops = flops + pending * chosen[k + 1].flops
            preds.append(pred)
            costs.append(float(flops.sum()))
            tiers = [
                t.with_thresholds(exit_threshold=exit_grid[k][exit_choice[k]])
                for k, t in enumerate(cfg.tiers)
            ]
            for k, th in enumerate(cascade):
                tiers[k] = tiers[k].with_thresholds(threshold=th)
            configs.append(cfg.replace(tiers=tuple(tiers)))
    return CandidateGrid(np.stack(preds), np.asarray(costs), configs)


@dataclasses.dataclass(frozen=True)
class ComposedPoint:
    """The calibrated system.

    Attributes:
      config: the chosen thresholds (and the static choices of the grid it came from).
      point: accuracy, cost (FLOPs relative to the reference) and whether the target held.
      grid: which of the pooled grids it came from.
    """

    config: ComposedConfig
    point: OperatingPoint
    grid: int


def pareto_front(loss: Float[np.ndarray, " m"], cost: Float[np.ndarray, " m"]) -> np.ndarray:
    """Indices of the candidates that no other beats in both loss and cost (a cheaper one
    with loss at most theirs, or an equally cheap one with less), most expensive first.
    Along this sequence the loss never falls as the cost falls."""
    keep, best = [], math.inf
    for i in np.lexsort((loss, cost)):  # cheapest first; of equal cost, least loss first
        if loss[i] < best:
            keep.append(int(i))
            best = float(loss[i])
    return np.asarray(keep[::-1], np.int64)


def calibrate_composed(
    grids: Sequence[CandidateGrid],
    labels: Int[np.ndarray, " n"],
    reference_correct: Bool[np.ndarray, " n"],
    reference_flops: float,
    target: CalibrationTarget,
    seed: int = 0,
) -> ComposedPoint:
    """The cheapest candidate of the pooled grids that meets `target` (cost = FLOPs over
    `reference_flops`, the reference model's total FLOPs on the same examples).

    For the guarantee target this is Pareto testing (Laufer-Goldshtein et al., 2023): a
    fixed-sequence test over thousands of joint candidates sorted by cost alone stops at
    the first noisy one, however cheap the candidates behind it. So a random half of the
    examples (`seed`) picks the sequence, the candidates on the (cost, drop) Pareto front
    there, most expensive first, and the other half tests it: the bound, and so the
    guarantee, rests on labels the sequence never saw (costs need no labels: they are over
    all examples, as are the reported accuracies).
    """
    if not grids:
        raise ValueError("no candidate grids to calibrate over")
    if reference_flops <= 0:
        raise ValueError(f"reference_flops must be positive, got {reference_flops}")
    labels = np.asarray(labels)
    reference_correct = np.asarray(reference_correct, bool)
    correct = np.concatenate([g.predictions == labels[None] for g in grids])
    cost = np.concatenate([g.flops for g in grids]) / reference_flops
    which = np.concatenate([np.full(len(g.flops), i) for i, g in enumerate(grids)])
    configs = [c for g in grids for c in g.configs]
    if target.objective is Objective.GUARANTEE and len(labels) >= 2:
        half = np.random.default_rng(seed).permutation(len(labels))
        pick, tested = np.sort(half[: len(labels) // 2]), np.sort(half[len(labels) // 2 :])
        drop = (reference_correct[pick][None] & ~correct[:, pick]).mean(axis=1)
        order = pareto_front(drop, cost)
    else:
        # Most expensive first: the order a statistical guarantee tests candidates in.
        order, tested = np.argsort(-cost, kind="stable"), np.arange(len(labels))
    op = calibrate(
        correct[order][:, tested], cost[order], reference_correct[tested], target, list(order)
    )
    i = int(op.setting)
    # Accuracies over every example (a guarantee's bound is over the tested ones).
    point = dataclasses.replace(
        op,
        index=i,
        setting=None,
        accuracy=float(correct[i].mean()),
        reference_accuracy=float(reference_correct.mean()),
    )
    return ComposedPoint(config=configs[i], point=point, grid=int(which[i]))
