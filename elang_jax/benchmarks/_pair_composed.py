"""The composed pair (issue 15): the E-LANG energy router on a MiniLM Swift that exits
early, in front of an MPNet Super that exits early and prunes tokens (ACC), as one compiled
step (`elang_jax.compose.ComposedClassifier` on per-tier inputs).

Exit heads are DeeBERT's second stage: trained on each fine-tuned backbone's frozen features
of training examples (never calibration ones), cached next to the model by its weights. The
cascade threshold, both exit thresholds and Super's keep schedule are calibrated jointly on
the calibration split (`compose.candidate_grid` replays the step offline for every
combination; one Super pass per keep schedule); the candidate meeting each target (accuracy,
guarantee) that executes the fewest FLOPs on the calibration batches, padding rows of its
compaction buckets included (`compose.ExecutedCost`), gets exit buckets fitted to the rows
it runs there (`compose.fit_composed_buckets`), and is compiled and run on dev.

Shape vocabulary: n examples, v valid rows of a batch.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from jaxtyping import Bool, Int

from elang_jax import compose, exits, flops, pruning
from elang_jax import data as D
from elang_jax.benchmarks._pair_methods import ACCURACY, SWIFT
from elang_jax.benchmarks._pair_models import Finetuned
from elang_jax.calibration import CalibrationTarget
from elang_jax.checkpoints import sha256_of
from elang_jax.core import bucket_sizes
from elang_jax.demo._models import fingerprint, load_params, save_params
from elang_jax.routing import Score
from elang_jax.timing import batch_inputs
from elang_jax.training._finetune import FINAL_DIR

log = logging.getLogger(__name__)
COMPOSED_ROW = "Composed: E-LANG + exits + ACC"


def composed_row_name(target: str) -> str:
    """The composed row calibrated for `target` (named like the cascade rows)."""
    return COMPOSED_ROW if target == ACCURACY else f"{COMPOSED_ROW} ({target})"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairComposed:
    """The composed pair's structure and calibration.

    Attributes:
      swift_exits: the Swift's layers with an exit head (1-based, ending at its last).
      super_exits: Super's likewise.
      exit_buckets: fractions of the batch the examples still running in a tier are
        packed into before each segment between exits (the Swift's first segment runs the
        whole batch; the Super's packs the escalated rows). With `fit_buckets`, the ones
        calibration chooses with; the step compiles as many, fitted.
      fit_buckets: once a target's thresholds are chosen, refit each tier's exit buckets
        (as many nonzero sizes) to the rows its segments run on the calibration batches
        (`compose.fit_composed_buckets`); the predictions do not change.
      packing: "per_segment": the Super packs each of its segments on its own, escalated
        rows included (`compose.Packing`), so the compactions add up: 6 exit buckets make
        72 MPNet layer copies. With 8 (every eighth of the batch) one SST-2 length's
        step held about 7,500 memory maps, and the calibration and dev lengths together
        came within 10% of the process's cap (`engine.memory_maps`).
        "nested": the escalated rows are packed into a cascade bucket and the Super's
        segments into exit buckets of that one; the compactions multiply (with 8 cascade
        buckets and 5 exit buckets XLA had not compiled one input shape after 4 minutes
        on 2 busy cores), so the buckets must stay coarse (4 cascade, exit 0, 1/2, 1: 80
        MPNet layer copies) and rows are rounded up twice: on SST-2 the step executed
        2.50x fewer FLOPs than Super where the analytic count said 3.09x.
      cascade_buckets: with "nested" packing, escalated rows are packed into buckets of
        b/n, 2b/n, ..., b rows for n = this.
      acc_targets: predicted FLOP speed-ups of the keep schedules tried on Super (each one
        Super pass over the calibration split); the unpruned schedule is always tried.
      grid: candidate thresholds per decision (cascade, each tier's exits).
      exit_train_examples: training examples the exit heads learn from (frozen backbones;
        the calibration holdout excluded); fewer when the split is smaller.
      exit_epochs: epochs of exit-head training.
      exit_pooling: what an intermediate head reads ("mean": the mean over real tokens;
        these sentence-embedding backbones have no trained pooler).
    """

    swift_exits: tuple[int, ...] = (2, 4, 6)
    super_exits: tuple[int, ...] = (4, 8, 12)
    exit_buckets: tuple[float, ...] = (0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0)
    packing: str = "per_segment"
    fit_buckets: bool = True
    cascade_buckets: int = 4
    acc_targets: tuple[float, ...] = (1.25, 1.5)
    grid: int = 12
    exit_train_examples: int = 8000
    exit_epochs: float = 4.0
    exit_pooling: str = "mean"

    def __post_init__(self):
        for name in ("swift_exits", "super_exits", "exit_buckets", "acc_targets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("swift_exits", "super_exits"):
            try:
                self.exit_config(getattr(self, name))
            except ValueError as e:
                raise ValueError(f"composed.{name}: {e}") from None
        if self.packing not in set(compose.Packing):
            valid = [p.value for p in compose.Packing]
            raise ValueError(f"composed.packing must be one of {valid}, got {self.packing!r}")
        if any(not t > 1.0 for t in self.acc_targets):
            raise ValueError(f"composed.acc_targets must be > 1, got {self.acc_targets}")
        counts = (self.grid, self.exit_train_examples, self.cascade_buckets)
        if min(counts) < 1 or not self.exit_epochs > 0:
            raise ValueError(
                f"composed.grid, exit_train_examples, cascade_buckets and exit_epochs must be "
                f"positive, got {counts[0]}, {counts[1]}, {counts[2]}, {self.exit_epochs}"
            )

    def exit_config(self, layers: tuple[int, ...]) -> exits.MultiExitConfig:
        return exits.MultiExitConfig(
            exit_layers=layers, pooling=self.exit_pooling, bucket_fractions=self.exit_buckets
        )


def exit_module(
    role: str,
    model: Finetuned,
    layers: tuple[int, ...],
    fit: D.Encoded,
    composed: PairComposed,
    batch_size: int,
    buckets: D.LengthBuckets,
    seed: int,
) -> exits.MultiExit:
    """`model` with exit heads after `layers`, trained on its frozen features of `fit` or
    loaded from `<workdir>/exit_heads-<key>.npz` (keyed by its weights and the recipe)."""
    me = exits.MultiExit(model.model, composed.exit_config(layers), rngs=nnx.Rngs(seed))
    weights = sha256_of(model.workdir / FINAL_DIR / "model.safetensors")
    key = fingerprint(weights, layers, composed.exit_pooling, len(fit), composed.exit_epochs, seed)
    path = Path(model.workdir) / f"exit_heads-{key}.npz"
    if not load_params(exits.ExitHeads(me), path):
        log.info("%s: exit heads after layers %s on %d examples", role, layers, len(fit))
        config = exits.ExitTrainConfig(epochs=composed.exit_epochs, seed=seed)
        exits.train_frozen_exits(me, fit, config, batch_size, buckets)
        save_params(exits.ExitHeads(me), path)
    return me


def _system(
    modules: Sequence[exits.MultiExit],
    rate: float,
    composed: PairComposed,
    cascade_fractions: tuple[float, ...],
) -> compose.ComposedClassifier:
    """The composed pair at keep-schedule `rate` (1: no pruning), thresholds at +inf."""
    swift = compose.ComposedTierConfig.make(
        "swift",
        score=Score.ENERGY,
        exit_policy=exits.ExitPolicy.ENTROPY,
        exit_buckets=composed.exit_buckets,
    )
    prune = rate < 1.0
    super_ = compose.ComposedTierConfig.make(
        "super",
        exit_policy=exits.ExitPolicy.ENTROPY,
        exit_buckets=composed.exit_buckets,
        acc_rate=rate if prune else None,
        acc=pruning.AccConfig.bert() if prune else None,
    )
    tiers = (swift, super_)
    config = compose.ComposedConfig(
        tiers=tiers, cascade_bucket_fractions=cascade_fractions, packing=composed.packing
    )
    return compose.ComposedClassifier(list(modules), config)


def composed_pair_rows(
    *,
    models: Mapping[str, Finetuned],
    composed: PairComposed,
    fit: Mapping[str, D.Encoded],
    calib_batches: Sequence[dict[str, D.Batch]],
    dev_batches: Sequence[dict[str, D.Batch]],
    y_cal: Int[np.ndarray, " n"],
    n_dev: int,
    super_correct: Bool[np.ndarray, " n"],
    targets: Mapping[str, CalibrationTarget],
    batch_size: int,
    buckets: D.LengthBuckets,
    super_dev_flops: float,
    seed: int,
) -> Iterator[tuple[Callable[[Any], Any], dict[str, Any], np.ndarray]]:
    """The composed pair calibrated on the calibration split for each target and run on dev.

    A generator: each target's step is compiled only when the caller asks for it, so the
    caller can time and release one before the next compiles.

    Args:
      models: the fine-tuned "super" and Swift (`SWIFT`).
      composed: its structure and calibration.
      fit: role -> the training examples its exit heads learn from.
      calib_batches, dev_batches: per-tier batches (`paired_batches`).
      y_cal: [n] calibration labels; n_dev: dev examples; super_correct: [n] whether
        Super alone is right on each calibration example (the target's reference).
      targets: target kind (`ACCURACY`, `GUARANTEE`) -> its calibration target; one row
        each, all chosen from the same candidate grids.
      batch_size, buckets: the step's rows, the length buckets of the exit-feature passes.
      super_dev_flops: Super alone's FLOPs over dev (the speed-up's reference).
      seed: exit-head initialisation and shuffling.

    Yields:
      per target, (the step as a function of a dict of per-tier batches, its row without
      accuracy and timing, its [n_dev] predictions).
    """
    roles = (SWIFT, "super")
    layers = {SWIFT: composed.swift_exits, "super": composed.super_exits}
    modules = [
        exit_module(r, models[r], layers[r], fit[r], composed, batch_size, buckets, seed)
        for r in roles
    ]
    n = composed.cascade_buckets
    fractions = tuple(i / n for i in range(n + 1))
    super_cfg = models["super"].model.config
    n_cal = len(y_cal)
    per_tier = [[b[r] for b in calib_batches] for r in roles]
    schedules = pruning.schedule_candidates(
        composed.acc_targets,
        pruning.LayerDims.of(super_cfg),
        pruning.batch_workload(per_tier[1]),
        pruning.AccConfig.bert(),
        fixed_flops=pruning.classifier_head_flops(super_cfg),
    )
    swift_out = None
    grids, calib_outcomes = [], []
    for s in schedules:
        system = _system(modules, s.rate, composed, fractions)
        if swift_out is None:  # the Swift tier does not depend on Super's schedule
            swift_out = compose.tier_outcomes(system, 0, per_tier[0], n_cal)
        log.info("composed: Super's every exit at keep rate %.3f on the calibration split", s.rate)
        super_out = compose.tier_outcomes(system, 1, per_tier[1], n_cal)
        grids.append(compose.candidate_grid(system, [swift_out, super_out], num=composed.grid))
        calib_outcomes.append([swift_out, super_out])
        # Its offline programs go now, not after the steps compile: XLA:CPU maps every
        # kernel on its own, and the process's maps are capped (`engine.memory_maps`).
        del system
        gc.collect()
    assert swift_out is not None and super_out is not None  # at least the unpruned schedule
    reference_flops = float(
        sum(flops.classifier_flops(super_cfg, int(t)) for t in super_out.lengths)
    )
    keep_schedules = [float(s.rate) for s in schedules]

    def run_chosen(kind: str, target: CalibrationTarget):
        # The cheapest candidate meeting `target`: its compiled step, checked against its
        # replay, run on dev.
        chosen = compose.calibrate_composed(
            grids, y_cal, super_correct, reference_flops, target, seed=seed
        )
        outcomes = calib_outcomes[chosen.grid]
        config = chosen.config
        if composed.fit_buckets:
            config = compose.fit_composed_buckets(
                compose.ComposedClassifier(modules, config), outcomes
            )
        built = compose.ComposedClassifier(modules, config)
        buckets = {
            r: list(bucket_sizes(batch_size, t.exit_buckets))
            for r, t in zip(roles, config.tiers, strict=True)
        }
        # On the calibration batches: the FLOPs executed with the buckets calibration chose
        # with, and with the ones the step compiles.
        calib_speedups = (
            1.0 / chosen.point.cost,
            reference_flops / compose.executed_flops(built, outcomes),
        )
        log.info(
            "composed (%s): exit buckets of %d rows %s; executed FLOP speed-up on the "
            "calibration split %.2f with the buckets it was chosen with, %.2f with these",
            kind,
            batch_size,
            buckets,
            *calib_speedups,
        )
        step = built.serving_step(batch_size)

        def forward(b: dict[str, D.Batch]) -> Any:
            return step([batch_inputs(b[r]) for r in roles], valid=b["super"].valid)

        def run(batches: Sequence[dict[str, D.Batch]], n: int) -> dict[str, np.ndarray]:
            names = ("pred", "tier", "flops", "swift_layers", "super_layers")
            idx, cols, executed = [], {k: [] for k in names}, 0.0
            for b in batches:
                out, v = forward(b), b["super"].valid
                lengths = [b[r].input_ids.shape[1] for r in roles]
                idx.append(b["super"].index[v])
                cols["pred"].append(np.asarray(out.predictions)[v])
                cols["tier"].append(np.asarray(out.tier)[v])
                cols["flops"].append(built.example_flops(out, lengths)[v])
                cols["swift_layers"].append(np.asarray(out.layers)[v, 0])
                cols["super_layers"].append(np.asarray(out.layers)[v, 1])
                layout = [np.array([t]) for t in lengths]
                one = compose.ExecutedCost(built, np.zeros(int(v.sum()), int), layout, batch_size)
                executed += float(one.total(np.asarray(out.exit_index)[v]).sum())
            per_example = {k: D.restore_order(idx, c, n) for k, c in cols.items()}
            return dict(per_example, executed=np.asarray(executed))

        # The compiled step must reproduce the offline replay it was calibrated on.
        offset = sum(len(g.flops) for g in grids[: chosen.grid])
        assert chosen.point.index is not None
        replay = grids[chosen.grid].predictions[int(chosen.point.index) - offset]
        on_calib = run(calib_batches, n_cal)
        dev = run(dev_batches, n_dev)
        escalated = dev["tier"] == 1
        swift_tier, super_tier = config.tiers
        op = chosen.point
        row = dict(
            method=composed_row_name(kind),
            kind="composed",
            score=str(Score.ENERGY),
            swift=SWIFT,
            target=kind,
            to_super=float(escalated.mean()),
            flop_speedup=super_dev_flops / float(dev["flops"].sum()),
            # Super's analytic FLOPs over the FLOPs the step executed (bucket rows included):
            # what the measured speed-up can reach.
            executed_flop_speedup=super_dev_flops / float(dev["executed"]),
            exit_buckets=buckets,
            buckets_fitted=composed.fit_buckets,
            calib_executed_flop_speedup_even=calib_speedups[0],
            calib_executed_flop_speedup=calib_speedups[1],
            threshold=float(swift_tier.threshold),
            swift_exit_threshold=float(swift_tier.exit_threshold),
            super_exit_threshold=float(super_tier.exit_threshold),
            acc_rate=float(super_tier.acc_rate or 1.0),
            swift_exits=list(composed.swift_exits),
            super_exits=list(composed.super_exits),
            swift_layers_mean=float(dev["swift_layers"].mean()),
            super_layers_mean_escalated=(
                float(dev["super_layers"][escalated].mean()) if escalated.any() else 0.0
            ),
            calib_accuracy=op.accuracy,
            calib_super_accuracy=op.reference_accuracy,
            target_met=bool(op.accuracy >= op.reference_accuracy - target.epsilon - 1e-12),
            upper_bound_drop=op.upper_bound_drop,
            calib_replay_agreement=float((on_calib["pred"] == replay).mean()),
            keep_schedules=keep_schedules,
        )
        return forward, row, dev["pred"]

    for kind, target in targets.items():
        yield run_chosen(kind, target)
