"""The sections of `DemoConfig`: one small frozen, validated dataclass per stage or method.

Each validates itself on construction; its errors name the section, the field and the value
(`finetune.batch_size must be >= 1, got batch_size=0`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from elang_jax.data import HoldoutKind
from elang_jax.pruning import AccVariant


class DemoError(ValueError):
    """Bad input to the demo (unknown task, unreadable evaluation file, bad settings)."""


# ----------------------------------------------------------------------------------------------
# Validation helpers: messages name the section, the field and its value.


def _fail(section: Any, name: str, rule: str) -> DemoError:
    value = getattr(section, name)
    return DemoError(f"{section.NAME}.{name} {rule}, got {name}={value!r}")


def _at_least_one(section: Any, *names: str) -> None:
    for name in names:
        if getattr(section, name) < 1:
            raise _fail(section, name, "must be >= 1")


def _positive(section: Any, *names: str) -> None:
    for name in names:
        if not getattr(section, name) > 0:
            raise _fail(section, name, "must be positive")


def _as_tuple(section: Any, *names: str) -> None:
    for name in names:
        object.__setattr__(section, name, tuple(getattr(section, name)))


def _flag(section: Any, *names: str) -> None:
    for name in names:
        if not isinstance(getattr(section, name), bool):
            raise _fail(section, name, "must be true or false")


def _lengths(section: Any, name: str) -> None:
    b = getattr(section, name)
    if not b or any(x < 1 for x in b) or list(b) != sorted(set(b)):
        raise _fail(section, name, "must be ascending positive lengths")


def _speedups(section: Any, name: str) -> None:
    targets = getattr(section, name)
    if not targets or any(not x > 1.0 for x in targets):
        raise _fail(section, name, "must be speed-ups > 1")


# ----------------------------------------------------------------------------------------------
# Sections


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneSection:
    """How Super and Swift are fine-tuned (`elang_jax.training.FinetuneConfig`).

    Attributes:
      train_examples: fine-tune on the first this many training examples left after the
        calibration holdout (GLUE's training files are shuffled, so this is a random
        sample); None: all of them.
      epochs: passes over them.
      batch_size: training batch size.
      learning_rate: peak AdamW learning rate (linear warmup, linear decay).
      warmup_ratio: share of the steps spent warming up.
      buckets: padded lengths of training batches (each compiles a train step).
      save_every: checkpoint every this many steps: what a Ctrl-C can lose at most.
    """

    NAME: ClassVar[str] = "finetune"

    train_examples: int | None = 16000
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.1
    buckets: tuple[int, ...] = (8, 16, 24, 32, 48, 64)
    save_every: int = 50

    def __post_init__(self):
        _as_tuple(self, "buckets")
        _lengths(self, "buckets")
        _at_least_one(self, "batch_size", "save_every")
        if self.train_examples is not None and self.train_examples < 1:
            raise _fail(self, "train_examples", "must be >= 1 or None")
        _positive(self, "epochs", "learning_rate")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise _fail(self, "warmup_ratio", "must lie in [0, 1)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationSection:
    """The calibration split, held out of the training split, and the target on it.

    Attributes:
      holdout: calibration examples held out of the training split (never trained on).
      holdout_kind: `HoldoutKind.SENTENCES` for SST-2, whose training split holds every
        phrase of its sentences; `RANDOM` for pair tasks.
      holdout_seed: seed of the holdout.
      epsilon: calibration target: accuracy at most this far below Super's on the
        calibration split (0.005 = half a point).
    """

    NAME: ClassVar[str] = "calibration"

    holdout: int = 1500
    holdout_kind: HoldoutKind | str = HoldoutKind.SENTENCES
    holdout_seed: int = 0
    epsilon: float = 0.005

    def __post_init__(self):
        try:
            object.__setattr__(self, "holdout_kind", HoldoutKind(self.holdout_kind))
        except ValueError:
            kinds = [k.value for k in HoldoutKind]
            raise _fail(self, "holdout_kind", f"must be one of {kinds}") from None
        _at_least_one(self, "holdout")
        if self.holdout_seed < 0:
            raise _fail(self, "holdout_seed", "must be >= 0")
        if not 0.0 <= self.epsilon <= 1.0:
            raise _fail(self, "epsilon", "must lie in [0, 1]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSection:
    """Evaluation and timing batches (calibration runs on the same batches).

    Attributes:
      buckets: padded lengths of evaluation and timing batches.
      batch_size: rows per evaluation and timing batch.
      limit: evaluate on the first this many dev examples only; None: all.
      timing_rounds: interleaved timing rounds (the median is reported).
      timing_batches: time on this many of the split's batches, evenly spread over the
        length-sorted batches (so every length bucket is represented); None: all of them.
        Accuracy and FLOPs always cover the whole split.
    """

    NAME: ClassVar[str] = "eval"

    buckets: tuple[int, ...] = (16, 32, 64)
    batch_size: int = 64
    limit: int | None = None
    timing_rounds: int = 3
    timing_batches: int | None = 3

    def __post_init__(self):
        _as_tuple(self, "buckets")
        _lengths(self, "buckets")
        _at_least_one(self, "batch_size", "timing_rounds")
        for name in ("limit", "timing_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise _fail(self, name, "must be >= 1 or None")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CascadeSection:
    """The Swift -> Super cascades (E-LANG energy, TangoBERT max-prob).

    Attributes:
      buckets: escalated inputs are packed into at most this many bucket sizes (plus the
        empty bucket).
      fit_buckets: place them where the calibration split's escalated counts fall
        (`elang_jax.core.fitted_fractions`: fewest Super FLOPs on average); False: even
        ones of b/n, 2b/n, ..., b rows for n = `buckets`.
    """

    NAME: ClassVar[str] = "cascade"

    buckets: int = 4
    fit_buckets: bool = True

    def __post_init__(self):
        _at_least_one(self, "buckets")
        _flag(self, "fit_buckets")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExitsSection:
    """Super with an exit head after every layer (DeeBERT's entropy policy).

    Attributes:
      train_examples: training examples the exit heads are trained on (frozen backbone,
        DeeBERT's second stage).
      epochs: epochs of exit-head training.
      exit_pooling: what the exit heads read: "mean" over tokens or "cls".
      exit_buckets: like `cascade.buckets`, for the examples still running after each exit
        (the multi-exit and the composed rows).
      fit_buckets: like `cascade.fit_buckets`, from the rows each segment runs on the
        calibration split once the row's thresholds are chosen.
    """

    NAME: ClassVar[str] = "exits"

    train_examples: int = 8000
    epochs: float = 4.0
    exit_pooling: str = "mean"
    exit_buckets: int = 4
    fit_buckets: bool = True

    def __post_init__(self):
        _at_least_one(self, "train_examples", "exit_buckets")
        _flag(self, "fit_buckets")
        _positive(self, "epochs")
        if self.exit_pooling not in ("mean", "cls"):
            raise _fail(self, "exit_pooling", "must be 'mean' or 'cls'")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PruningSection:
    """ACC token pruning of Super, zero-shot.

    Attributes:
      acc_variant: ACC scoring (`AccVariant`); the composed system scores tokens the same way.
      acc_targets: predicted FLOP speed-ups of the candidate keep schedules.
    """

    NAME: ClassVar[str] = "pruning"

    acc_variant: AccVariant | str = AccVariant.ATTENTION
    acc_targets: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0, 2.5)

    def __post_init__(self):
        try:
            object.__setattr__(self, "acc_variant", AccVariant(self.acc_variant))
        except ValueError:
            variants = [v.value for v in AccVariant]
            raise _fail(self, "acc_variant", f"must be one of {variants}") from None
        _as_tuple(self, "acc_targets")
        _speedups(self, "acc_targets")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoESection:
    """MoEfication of Super (k-means expert split, MLP routers).

    Attributes:
      experts: experts per FFN.
      active: candidate shares of experts run per token; calibration takes the cheapest
        meeting the target (or the most accurate). One value fixes it.
      train_examples: training examples whose FFN inputs train the routers.
      max_tokens: FFN inputs kept per layer for router training.
      router_epochs: router training epochs.
      calibration_steps: MoEfication's parameter calibration: this many fine-tuning steps
        of the MoEfied model (routers frozen, `moe.calibrate_moefied`) on the routers'
        training examples, batch `finetune.batch_size`; 0 skips it. Measured on SST-2: 200
        steps take the 2-of-8-expert model from 80.62 to 85.55 dev (Super: 86.58).
      calibration_lr: its peak learning rate (10% warmup, linear decay).
      impl: the `elang_jax.moe.MoEImpl` that runs the experts ("tiled": dropless, cost
        follows each expert's load). Every implementation gives the same outputs, so it
        changes the timing only (and no cache key).
    """

    NAME: ClassVar[str] = "moe"

    experts: int = 8
    active: tuple[float, ...] = (0.25,)
    train_examples: int = 4000
    max_tokens: int = 40000
    router_epochs: int = 20
    calibration_steps: int = 200
    calibration_lr: float = 1e-4
    impl: str = "tiled"

    def __post_init__(self):
        from elang_jax.moe import MoEImpl  # the demo's sections import nothing heavy eagerly

        if self.impl not in {i.value for i in MoEImpl}:
            raise _fail(self, "impl", f"must be one of {[i.value for i in MoEImpl]}")
        _as_tuple(self, "active")
        _at_least_one(self, "experts", "train_examples", "max_tokens", "router_epochs")
        if self.calibration_steps < 0:
            raise _fail(self, "calibration_steps", "must be >= 0")
        if not 0.0 < self.calibration_lr < 1.0:
            raise _fail(self, "calibration_lr", "must lie in (0, 1)")
        if not self.active or any(not 0.0 < x <= 1.0 for x in self.active):
            raise _fail(self, "active", "must be shares in (0, 1]")
        if any(round(x * self.experts) < 1 for x in self.active):
            raise _fail(self, "active", f"must each run at least one of {self.experts} experts")

    @property
    def top_k(self) -> tuple[int, ...]:
        """Experts run per token for each `active` share, most first (most conservative)."""
        return tuple(sorted({round(a * self.experts) for a in self.active}, reverse=True))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComposeSection:
    """The composed system: Super exiting early and pruning tokens at once
    (`elang_jax.compose`), with the multi-exit model's heads and ACC's scoring.

    Attributes:
      acc_targets: predicted FLOP speed-ups of the keep schedules it tries; each costs one
        pass over the calibration split.
      grid: candidate exit thresholds per keep schedule.
    """

    NAME: ClassVar[str] = "compose"

    acc_targets: tuple[float, ...] = (1.25, 1.5, 1.75)
    grid: int = 24

    def __post_init__(self):
        _as_tuple(self, "acc_targets")
        _speedups(self, "acc_targets")
        _at_least_one(self, "grid")


# DemoConfig's section fields -> their classes.
SECTIONS: dict[str, type] = {
    "finetune": FinetuneSection,
    "calibration": CalibrationSection,
    "eval": EvalSection,
    "cascade": CascadeSection,
    "exits": ExitsSection,
    "pruning": PruningSection,
    "moe": MoESection,
    "compose": ComposeSection,
}


def as_section(name: str, value: Any, base: Any = None) -> Any:
    """Section `name` from a section, or from a mapping of fields changed from `base` (the
    section's defaults when None)."""
    cls = SECTIONS[name]
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise DemoError(f"{name} must be a {cls.__name__} or a mapping of its fields, got {value=}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise DemoError(f"{name} has no field(s) {unknown}; its fields: {sorted(known)}")
    return cls(**value) if base is None else dataclasses.replace(base, **value)
