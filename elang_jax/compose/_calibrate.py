"""Calibrating a composed system's thresholds jointly, offline.

Each tier runs once over the calibration split with no example leaving early
(`tier_outcomes`: every exit's logits under the tier's pruning and MoE settings). From those,
`candidate_grid` replays the compiled step's decisions exactly (exit by exit, then tier by
tier) for every combination of candidate thresholds, with each example's analytic FLOPs and
the FLOPs the step executes at its buckets' rows (`ExecutedCost`), and `calibrate_composed`
hands the grid to the shared `elang_jax.calibration.calibrate` (for the guarantee target,
only its Pareto front: see there).
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
from elang_jax.compose._executed import ExecutedCost
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
      batch: [n] which batch each example sat in, and `rows` the rows every batch was padded
        to: the layout the executed cost replays the step's buckets over (`ExecutedCost`).
    """

    logits: Float[np.ndarray, "e n c"]
    lengths: Int[np.ndarray, " n"]
    batch: Int[np.ndarray, " n"]
    rows: int


def _executed_cost(system: ComposedClassifier, outcomes: Sequence[TierOutcomes]) -> ExecutedCost:
    """The bucket replay over the batches every tier's outcomes came from."""
    first = outcomes[0]
    for o in outcomes:
        if o.rows != first.rows or not np.array_equal(o.batch, first.batch):
            raise ValueError(
                "tier outcomes come from different batches: pass each tier's of the same"
            )
    nb = int(first.batch.max(initial=-1)) + 1
    lengths = []
    for o in outcomes:
        per_batch = np.zeros(nb, np.int64)
        per_batch[o.batch] = o.lengths
        lengths.append(per_batch)
    return ExecutedCost(system, first.batch, lengths, first.rows)


def tier_outcomes(
    system: ComposedClassifier,
    k: int,
    batches: Sequence[data.Batch],
    n: int,
    progress: Callable[[int], Any] | None = None,
) -> TierOutcomes:
    """Tier k of `system` over padded batches holding n examples (each once)."""
    idx, logits, lengths, batch_of = [], [], [], []
    rows = {b.input_ids.shape[0] for b in batches}
    if len(rows) > 1:
        raise ValueError(f"batches of different sizes {sorted(rows)}: pad every batch alike")
    for i, b in enumerate(batches):
        inputs = dict(
            input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids
        )
        lg = np.asarray(system.exit_logits(k, inputs), np.float32)
        idx.append(b.index[b.valid])
        logits.append(np.moveaxis(lg[:, b.valid], 1, 0))  # [e v c] -> [v e c]
        lengths.append(np.full(int(b.valid.sum()), b.input_ids.shape[1]))
        batch_of.append(np.full(int(b.valid.sum()), i))
        if progress is not None:
            progress(1)
    per_example = data.restore_order(idx, logits, n)  # [n e c]
    return TierOutcomes(
        logits=np.moveaxis(per_example, 0, 1),
        lengths=data.restore_order(idx, lengths, n).astype(np.int64),
        batch=data.restore_order(idx, batch_of, n).astype(np.int64),
        rows=rows.pop() if rows else 0,
    )


@dataclasses.dataclass(frozen=True)
class _TierRun:
    """A tier's decisions at one exit threshold (everything the cascade needs)."""

    predictions: np.ndarray
    scores: np.ndarray
    flops: np.ndarray
    exit_index: np.ndarray


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
                exit_index=e,
            )
        )
    return runs


def replay_exit_index(
    system: ComposedClassifier,
    outcomes: Sequence[TierOutcomes],
    config: ComposedConfig | None = None,
) -> Int[np.ndarray, "n k"]:
    """[n k] each example's exit index in every tier, -1 where the tier did not run (as
    `ComposedOutput.exit_index`): the decisions `system`'s step takes at the thresholds of
    `config` (default: its own), replayed from the tier outcomes as `candidate_grid` does."""
    config = system.config if config is None else config
    if len(outcomes) != system.num_tiers:
        raise ValueError(f"{system.num_tiers} tiers but outcomes for {len(outcomes)}")
    n = outcomes[0].logits.shape[1]
    out = np.full((n, system.num_tiers), -1, np.int64)
    pending = np.ones(n, bool)
    for k, tier in enumerate(config.tiers):
        run = _tier_runs(system, k, outcomes[k], [tier.exit_threshold])[0]
        out[pending, k] = run.exit_index[pending]
        if k + 1 < system.num_tiers:
            pending &= ~(run.scores >= np.float32(tier.threshold))
    return out


def executed_flops(system: ComposedClassifier, outcomes: Sequence[TierOutcomes]) -> float:
    """The FLOPs `system`'s step executes over the outcomes' batches at its own thresholds
    and buckets, padding rows included (`ExecutedCost`)."""
    replay = _executed_cost(system, outcomes)
    return float(replay.total(replay_exit_index(system, outcomes)).sum())


@dataclasses.dataclass(frozen=True)
class CandidateGrid:
    """Every combination of candidate thresholds, replayed offline.

    Attributes:
      predictions: [m n] each candidate's predictions.
      flops: [m] total analytic FLOPs over the examples.
      configs: [m] the system's config with each candidate's thresholds.
      executed: [m] total FLOPs the compiled step executes on the same batches, padding
        rows of its buckets included (`ExecutedCost`); None when not replayed.
    """

    predictions: Int[np.ndarray, "m n"]
    flops: Float[np.ndarray, " m"]
    configs: list[ComposedConfig]
    executed: Float[np.ndarray, " m"] | None = None


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
    replay = _executed_cost(system, outcomes)
    everything = np.ones(outcomes[0].batch.shape, bool)
    full_rows = np.full(replay.num_batches, replay.rows)
    # The first tier's executed cost depends on its exit threshold alone.
    first = [replay.tier(0, everything, r.exit_index, full_rows).sum() for r in runs[0]]
    cascade_grid = []
    for k in range(system.num_tiers - 1):
        s = np.concatenate([r.scores for r in runs[k]])
        cascade_grid.append(_between(s, num))
    preds, costs, executed, configs = [], [], [], []
    for exit_choice in itertools.product(*(range(len(g)) for g in exit_grid)):
        chosen = [runs[k][i] for k, i in enumerate(exit_choice)]
        for cascade in itertools.product(*cascade_grid):
            pred = chosen[-1].predictions.copy()
            flops = chosen[0].flops.copy()
            done = first[exit_choice[0]]
            pending = np.ones(pred.shape, bool)
            for k, th in enumerate(cascade):
                take = pending & (chosen[k].scores >= np.float32(th))
                pred[take] = chosen[k].predictions[take]
                pending &= ~take
                flops = flops + pending * chosen[k + 1].flops
                rows = replay.tier_rows(k + 1, pending)
                done += replay.tier(k + 1, pending, chosen[k + 1].exit_index, rows).sum()
            preds.append(pred)
            costs.append(float(flops.sum()))
            executed.append(float(done))
            tiers = [
                t.with_thresholds(exit_threshold=exit_grid[k][exit_choice[k]])
                for k, t in enumerate(cfg.tiers)
            ]
            for k, th in enumerate(cascade):
                tiers[k] = tiers[k].with_thresholds(threshold=th)
            configs.append(cfg.replace(tiers=tuple(tiers)))
    return CandidateGrid(np.stack(preds), np.asarray(costs), configs, np.asarray(executed))


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
    cost: str = "executed",
) -> ComposedPoint:
    """The cheapest candidate of the pooled grids that meets `target`.

    `cost` is what "cheapest" means: "executed", the FLOPs the compiled step runs on the
    calibration batches, padding rows of its buckets included (`CandidateGrid.executed`:
    wall-clock time follows it, so a candidate whose savings the buckets round away is
    not chosen for them), or "analytic", each example's own FLOPs. Either is reported
    over `reference_flops`, the reference model's analytic FLOPs on the same examples.

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
    if cost not in ("executed", "analytic"):
        raise ValueError(f"cost must be 'executed' or 'analytic', got {cost!r}")
    if cost == "executed" and any(g.executed is None for g in grids):
        raise ValueError("cost='executed' needs every grid's executed FLOPs (candidate_grid)")
    labels = np.asarray(labels)
    reference_correct = np.asarray(reference_correct, bool)
    correct = np.concatenate([g.predictions == labels[None] for g in grids])
    measure = [g.flops if cost == "analytic" or g.executed is None else g.executed for g in grids]
    relative = np.concatenate(measure) / reference_flops
    which = np.concatenate([np.full(len(g.flops), i) for i, g in enumerate(grids)])
    configs = [c for g in grids for c in g.configs]
    if target.objective is Objective.GUARANTEE and len(labels) >= 2:
        half = np.random.default_rng(seed).permutation(len(labels))
        pick, tested = np.sort(half[: len(labels) // 2]), np.sort(half[len(labels) // 2 :])
        drop = (reference_correct[pick][None] & ~correct[:, pick]).mean(axis=1)
        order = pareto_front(drop, relative)
    else:
        # Most expensive first: the order a statistical guarantee tests candidates in.
        order, tested = np.argsort(-relative, kind="stable"), np.arange(len(labels))
    op = calibrate(
        correct[order][:, tested], relative[order], reference_correct[tested], target, list(order)
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
