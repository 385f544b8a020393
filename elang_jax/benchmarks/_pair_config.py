"""What the pair experiment (`_eval_pair`, eval/pair.py) runs: `PairEvalConfig`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elang_jax import data as D
from elang_jax.benchmarks._pair_composed import PairComposed
from elang_jax.benchmarks._pair_methods import (
    ACCURACY,
    SWIFT,
    PairMethod,
    pair_methods,
    pair_targets,
)
from elang_jax.benchmarks._pair_models import Distill, PairModel
from elang_jax.calibration import CalibrationTarget
from elang_jax.demo._sections import CalibrationSection, FinetuneSection
from elang_jax.models import BertConfig

# The Super recipe, sized for about 20 minutes on 2 CPU cores (MPNet-base trains at roughly
# a tenth of MiniLM's examples/s): the demo's recipe on half its phrases, at a learning rate
# suited to a base-size model.
SUPER_FINETUNE = FinetuneSection(train_examples=8000, learning_rate=8e-5)

# Sentence-pair tasks (MRPC: 3,668 training pairs, up to about 100 word pieces each): longer
# buckets, every training pair, two epochs of Super and four of the Swift.
PAIR_TASK_BUCKETS = (32, 48, 64, 96, 128)
PAIR_TASK_SUPER_FINETUNE = FinetuneSection(
    train_examples=None, epochs=2.0, learning_rate=5e-5, buckets=PAIR_TASK_BUCKETS
)
PAIR_TASK_SWIFT_FINETUNE = FinetuneSection(
    train_examples=None, epochs=4.0, learning_rate=1e-4, buckets=PAIR_TASK_BUCKETS
)
PAIR_TASK_CALIBRATION = CalibrationSection(holdout=600, holdout_kind="random")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairEvalConfig:
    """What eval/pair.py runs: fine-tuning both models, calibration, dev, timing.

    Attributes:
      task: GLUE task (a single-sentence one for `HoldoutKind.SENTENCES`).
      super_: the Super model and its recipe (default: all-mpnet-base-v2, `SUPER_FINETUNE`).
      swift: the Swift model and its recipe (default: all-MiniLM-L6-v2, all six layers,
        under the demo's recipe).
      max_length: longest example in tokens (longer ones truncated), training and eval.
      seed: seed of fine-tuning.
      calibration: the held-out calibration split and the accuracy target (the demo's
        `CalibrationSection`: 1,500 whole sentences, epsilon 0.005).
      batch_size: rows of every evaluation and timing batch (the compiled step's size).
      eval_buckets: padded lengths of evaluation batches (per tier). On SST-2 dev
        (length-sorted batches of 64) buckets every 8 tokens hold 1.14x the tokens of
        trimming each batch to its longest row, as eager PyTorch does; (16, 32, 64) held
        1.42x. Each length is a compiled program of every row's step; the rows are timed
        in groups that release their programs (`timing_max_map_share`), since XLA:CPU maps
        each kernel into memory on its own and all of them at once pass Linux's cap.
      eval_limit: evaluate on the first this many dev examples; None: all.
      cascade_buckets: escalated rows are packed into at most this many bucket sizes
        (plus the empty bucket); on SST-2, 8 even ones brought the measured speed-up to
        0.95 of the FLOP model's, against 0.78 with 4.
      fit_cascade_buckets: place each cascade's buckets where its escalated counts fall on
        the calibration split (`elang_jax.core.fit_buckets`: fewest Super rows on
        average, each calibration batch weighted by its rows times its length); False:
        even buckets of b/n, 2b/n, ..., b rows for n = `cascade_buckets`.
      timing_rounds: interleaved timing rounds (the median ratio is reported).
      timing_batches: time on this many dev batches evenly spread over the length-sorted
        batches; None: all of them. Accuracy and FLOPs always cover the whole split.
      timing_max_map_share: rows are timed against Super in groups, each group's programs
        released before the next compiles, a group filling at most this share of the
        process's memory-map cap (`elang_jax.timing.GroupedTiming`).
      cache_dir: where the fine-tuned models live; None: `<elang_jax cache>/pair/<task>`.
      swift_from: a finished fine-tuning run directory (the demo's `<cache>/super`) to adopt
        as the Swift when it ran exactly the Swift recipe; None: `<elang_jax
        cache>/demo/<task>/super` if there is one. Ignored once the Swift is cached.
      cascadebert: also run CascadeBERT without and with its difficulty-aware loss (DAR):
        a Swift on the plain recipe, and one fine-tuned with DAR on hard flags from that
        Swift's own mistakes on its training set (`_pair_methods`).
      plain_swift: the recipe of CascadeBERT's Swifts when the Swift is distilled (they
        learn from labels only, as CascadeBERT does).
      composed: also calibrate and run the composed pair (`_pair_composed`: the E-LANG
        router on a Swift that exits early, before a Super that exits early and prunes
        tokens) at the accuracy target (and at the guarantee target with
        `guarantee_delta`); None: not.
      peers: also time the same checkpoints in transformers' PyTorch, cascaded the
        TangoBERT way and the E-LANG code's way (`_pair_peers`), against our step.
      eval_file: evaluate on this labelled TSV (the task's GLUE dev format) instead of dev.
      guarantee_delta: also calibrate every method for the guarantee target (accuracy at
        most `epsilon` below Super's with probability 1 - this); None: accuracy target only.
      progress: progress bars while fine-tuning (on a terminal only).
    """

    __no_type_check__ = True  # sections may be given as mappings; converted below

    task: str = "sst2"
    super_: PairModel = dataclasses.field(
        default_factory=lambda: PairModel(finetune=SUPER_FINETUNE)
    )
    swift: PairModel = dataclasses.field(default_factory=PairModel)
    max_length: int = 64
    seed: int = 0
    calibration: CalibrationSection = dataclasses.field(default_factory=CalibrationSection)
    batch_size: int = 64
    eval_buckets: tuple[int, ...] = (16, 24, 32, 40, 48, 56, 64)
    eval_limit: int | None = None
    cascade_buckets: int = 8
    fit_cascade_buckets: bool = True
    timing_rounds: int = 3
    timing_batches: int | None = None
    timing_max_map_share: float = 0.75
    cache_dir: str | None = None
    swift_from: str | None = None
    cascadebert: bool = True
    plain_swift: FinetuneSection = dataclasses.field(default_factory=FinetuneSection)
    composed: PairComposed | None = dataclasses.field(default_factory=PairComposed)
    peers: bool = True
    eval_file: str | None = None
    guarantee_delta: float | None = 0.1
    progress: bool = True

    def __post_init__(self):
        for name in ("super_", "swift"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, PairModel(**value))
            elif not isinstance(value, PairModel):
                raise ValueError(f"{name} must be a PairModel or a mapping, got {value!r}")
        if isinstance(self.composed, Mapping):
            object.__setattr__(self, "composed", PairComposed(**self.composed))
        if isinstance(self.plain_swift, Mapping):
            object.__setattr__(self, "plain_swift", FinetuneSection(**self.plain_swift))
        if isinstance(self.calibration, Mapping):
            object.__setattr__(self, "calibration", CalibrationSection(**self.calibration))
        object.__setattr__(self, "eval_buckets", tuple(self.eval_buckets))
        if D.get_glue_task(self.task).is_pair and self.calibration.holdout_kind == "sentences":
            raise ValueError(f"{self.task} is a sentence-pair task: use holdout_kind='random'")
        for name in ("max_length", "batch_size", "cascade_buckets", "timing_rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        for name in ("eval_limit", "timing_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {name}={value}")
        b = self.eval_buckets
        if not b or list(b) != sorted(set(b)) or b[0] < 1 or b[-1] < self.max_length:
            raise ValueError(
                f"eval_buckets must be ascending positive lengths, the largest >= "
                f"{self.max_length=}, got eval_buckets={b}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed=}")
        if not 0.0 < self.timing_max_map_share <= 1.0:
            raise ValueError(
                f"timing_max_map_share must lie in (0, 1], got {self.timing_max_map_share=}"
            )
        if self.guarantee_delta is not None and not 0.0 < self.guarantee_delta < 1.0:
            raise ValueError(
                f"guarantee_delta must lie in (0, 1) or be None, got {self.guarantee_delta=}"
            )
        for name in ("cache_dir", "swift_from", "eval_file"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))

    def replace(self, **kw: Any) -> PairEvalConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **kw)

    @property
    def cache_path(self) -> Path:
        """The cache directory (see `cache_dir`)."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        from elang_jax.checkpoints import cache_dir

        return cache_dir() / "pair" / self.task

    @property
    def target(self) -> CalibrationTarget:
        return CalibrationTarget(epsilon=self.calibration.epsilon)

    def target_for(self, kind: str) -> CalibrationTarget:
        """The calibration target of a method's `target` (`ACCURACY` or `GUARANTEE`)."""
        if kind == ACCURACY:
            return self.target
        assert self.guarantee_delta is not None  # no guarantee rows without it
        return CalibrationTarget(
            objective="guarantee", epsilon=self.calibration.epsilon, delta=self.guarantee_delta
        )

    @property
    def targets(self) -> tuple[str, ...]:
        """The calibration targets every row is run at (`_pair_methods.pair_targets`)."""
        return pair_targets(guarantee=self.guarantee_delta is not None)

    @property
    def methods(self) -> tuple[PairMethod, ...]:
        """The cascade rows this run reports (`_pair_methods.pair_methods`)."""
        return pair_methods(cascadebert=self.cascadebert, targets=self.targets)

    def spec(self, role: str) -> PairModel:
        """The model and recipe of `role`: Super, the Swift, or CascadeBERT's plain-recipe
        Swifts (the Swift without distillation; DAR changes the loss, not the recipe)."""
        if role == "super":
            return self.super_
        if role == SWIFT or self.swift.distill is None:
            return self.swift
        return dataclasses.replace(self.swift, distill=None, finetune=self.plain_swift)

    @classmethod
    def full(
        cls,
        *,
        task: str = "sst2",
        super_recipe: Mapping[str, Any] | None = None,
        swift_recipe: Mapping[str, Any] | None = None,
        distill: bool = False,
        **kw: Any,
    ) -> PairEvalConfig:
        """The real run on `task`. `super_recipe` and `swift_recipe` change fields of each
        model's recipe (e.g. `{"train_examples": 4000}` when time is short); `distill`
        trains the Swift on Super's soft labels too, on every training example (twice the
        epochs when the recipe already takes every one).

        SST-2 gets the defaults. A sentence-pair task (MRPC, RTE, QNLI) gets inputs of up to
        128 tokens, a random 600-example calibration holdout and the `PAIR_TASK_*` recipes
        (fields given in `kw` win).
        """
        if D.get_glue_task(task).is_pair:
            base: dict[str, Any] = dict(
                max_length=128,
                eval_buckets=tuple(range(16, 129, 16)),
                calibration=PAIR_TASK_CALIBRATION,
            )
            super_ft, swift_ft = PAIR_TASK_SUPER_FINETUNE, PAIR_TASK_SWIFT_FINETUNE
        else:
            base, super_ft, swift_ft = {}, SUPER_FINETUNE, FinetuneSection()
        base["plain_swift"] = swift_ft
        if distill:
            # Soft labels cost one Super pass, far less than Super's fine-tuning: a recipe
            # on a sample of the training set learns from all of it, one on all of it
            # for twice the epochs.
            swift_ft = (
                dataclasses.replace(swift_ft, epochs=2 * swift_ft.epochs)
                if swift_ft.train_examples is None
                else dataclasses.replace(swift_ft, train_examples=None)
            )
        super_ft = dataclasses.replace(super_ft, **dict(super_recipe or {}))
        swift_ft = dataclasses.replace(swift_ft, **dict(swift_recipe or {}))
        base.update(
            super_=PairModel(finetune=super_ft),
            swift=PairModel(finetune=swift_ft, distill=Distill() if distill else None),
        )
        return cls(task=task, **{**base, **kw})

    @classmethod
    def tiny(cls, super_tokenizer_dir: Any, swift_tokenizer_dir: Any, **kw: Any) -> PairEvalConfig:
        """Seconds-long runs for tests: a 2-layer Super and a 1-layer Swift, random 32-wide
        BERTs, each with its own (real) tokenizer, on a few dozen SST-2 examples."""
        recipe = FinetuneSection(
            train_examples=48, batch_size=16, learning_rate=1e-3, buckets=(32,), save_every=2
        )

        def model(layers: int, tokenizer_dir: Any) -> PairModel:
            from elang_jax.data import load_tokenizer

            vocab = len(load_tokenizer(tokenizer_dir))
            config = BertConfig.tiny(
                vocab_size=vocab,
                num_layers=layers,
                intermediate_size=64,
                max_position_embeddings=64,
            )
            return PairModel(model_config=config, tokenizer_dir=tokenizer_dir, finetune=recipe)

        base: dict[str, Any] = dict(
            super_=model(2, super_tokenizer_dir),
            swift=model(1, swift_tokenizer_dir),
            max_length=32,
            calibration=CalibrationSection(holdout=24, holdout_kind="random"),
            batch_size=16,
            eval_buckets=(16, 32),
            eval_limit=40,
            cascade_buckets=2,
            timing_rounds=1,
            guarantee_delta=None,  # the guarantee rows add compilations, not code paths
            composed=PairComposed(
                swift_exits=(1,),
                super_exits=(1, 2),
                exit_buckets=(0.0, 0.5, 1.0),
                cascade_buckets=2,
                acc_targets=(1.25,),
                grid=4,
                exit_train_examples=32,
                exit_epochs=1.0,
            ),
            progress=False,
        )
        return cls(**{**base, **kw})
