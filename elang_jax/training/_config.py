"""Fine-tuning configuration: one frozen dataclass, validated on construction, plus presets."""

from __future__ import annotations

import dataclasses
import enum
import os
from typing import Any

from elang_jax import jsonio
from elang_jax.data._source import DataSource
from elang_jax.data._splits import HoldoutKind
from elang_jax.models import BertConfig


def config_json(config: Any) -> dict[str, Any]:
    """A config dataclass's fields, JSON-serialisable (`elang_jax.jsonio.config_json`).

    Nested config dataclasses (the sections of `elang_jax.demo.DemoConfig`, say) become nested
    dicts, a `BertConfig` a dict of its fields as strings, tuples lists, enums their values.
    """
    return jsonio.config_json(config, as_strings=(BertConfig,))


class Schedule(enum.StrEnum):
    """Learning-rate decay after the linear warmup."""

    LINEAR = "linear"  # linear decay to 0 at the last step (the BERT recipe)
    COSINE = "cosine"  # cosine decay to 0 at the last step


# Fields that do not change which parameters a run produces: they may differ between a run and
# the run that resumes it. Every other field must match (see `trajectory_fields`).
# The data source is among them: both sources give the same examples in the same order.
_RESUMABLE_FIELDS = frozenset(
    {
        "max_steps",
        "max_minutes",
        "eval_every",
        "save_every",
        "keep_checkpoints",
        "log_every",
        "progress",
        "data_source",
        "data_dir",
    }
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """How to fine-tune a BERT-family classifier on a GLUE task.

    The learning-rate schedule spans `epochs` full passes over the training set. `max_steps`
    only stops training early: it does not shorten the schedule, so a run stopped by
    `max_steps` and resumed with a larger cap (or none) ends with exactly the parameters of an
    uninterrupted run.

    What the loss is (plain cross-entropy, or a hook such as CascadeBERT's difficulty-aware
    loss) and what the forward pass runs are not settings of this config: they are the
    `loss` and `forward` hooks of `train_and_evaluate`.

    Attributes:
      task: GLUE task name, a key of `elang_jax.data.GLUE_TASKS` (`"sst2"`, `"mrpc"`, ...).
      model_dir: Hugging Face checkpoint directory to start from (a bare encoder gets a freshly
        initialised classifier). None: random initialisation from `model_config`.
      model_config: architecture for random initialisation; must be None when `model_dir` is
        set (the checkpoint's config.json decides the architecture).
      tokenizer_dir: tokenizer directory; None uses `model_dir`.
      num_labels: number of classes; None takes the task's.
      dropout: overrides the model's hidden dropout rate; None keeps the checkpoint's (or
        `model_config`'s).
      max_length: longest example in tokens, special tokens included.
      truncate: truncate longer examples to `max_length` (counted and logged); if False, an
        over-long example is an error.
      buckets: padded sequence lengths a batch may have; ascending, the largest >= max_length.
        Each bucket compiles one train step (and one eval step).
      sort_by_length: group training examples of similar length into the same batch (batches
        still come in a shuffled order), which skips most of the padding.
      batch_size: training examples per step.
      eval_batch_size: examples per evaluation batch.
      learning_rate: peak learning rate, reached at the end of the warmup.
      schedule: decay after the warmup (`Schedule.LINEAR` or `Schedule.COSINE`).
      warmup_ratio: fraction of the schedule spent warming up linearly from 0.
      weight_decay: AdamW decoupled weight decay; biases and LayerNorm parameters get none.
      clip_norm: clip gradients to this global norm; None: no clipping.
      epochs: passes over the training set; may be fractional (e.g. 0.5).
      max_steps: stop after this many steps (the schedule still spans `epochs`); None: no cap.
      max_minutes: stop after this many minutes of training (then save, evaluate and export
        as after `max_steps`); None: no time limit.
      seed: seed of the classifier initialisation, the shuffling and dropout.
      bf16: compute in bfloat16; parameters and optimizer state stay float32.
      eval_every: evaluate every this many steps (and always at the end); 0: only at the end.
      save_every: checkpoint every this many steps (and always at the end); 0: only at the end.
      keep_checkpoints: how many recent checkpoints to keep.
      log_every: write a training-metrics line every this many steps.
      progress: show a tqdm progress bar (only on a terminal).
      train_split: split to train on.
      eval_split: split to evaluate on.
      train_limit: train on the first `train_limit` examples only (quick runs); None: all.
      eval_limit: evaluate on the first `eval_limit` examples only; None: all.
      holdout: set aside this many training examples for calibrating thresholds; never
        trained on (see `elang_jax.data.calibration_split`).
      holdout_seed: seed of that subset.
      holdout_kind: `HoldoutKind.RANDOM` (random examples) or `HoldoutKind.SENTENCES`
        (whole sentences, their phrases removed from training; for SST-2).
      num_layers: keep only the first `num_layers` layers of the checkpoint (a Swift model
        built from a larger one); None: all.
      data_source: where the GLUE examples are read from (`DataSource.TSV`, the shipped
        files, or `DataSource.TFDS`, the `glue_tfds` dataset built as ArrayRecord into
        `data_dir`); both give the same examples in the same order.
      data_dir: the TFDS data directory (built there on first use); None: the default
        (`elang_jax.data.default_tfds_dir()`). Only read with `DataSource.TFDS`.
    """

    task: str
    model_dir: str | None = None
    model_config: BertConfig | None = None
    tokenizer_dir: str | None = None
    num_labels: int | None = None
    dropout: float | None = None
    max_length: int = 128
    truncate: bool = True
    buckets: tuple[int, ...] = (16, 32, 64, 128)
    sort_by_length: bool = True
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    schedule: Schedule | str = Schedule.LINEAR
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float | None = 1.0
    epochs: float = 1.0
    max_steps: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    bf16: bool = False
    eval_every: int = 0
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50
    progress: bool = True
    train_split: str = "train"
    eval_split: str = "dev"
    train_limit: int | None = None
    eval_limit: int | None = None
    holdout: int = 0
    holdout_seed: int = 0
    holdout_kind: HoldoutKind | str = HoldoutKind.RANDOM
    num_layers: int | None = None
    data_source: DataSource | str = DataSource.TSV
    data_dir: str | None = None

    def __post_init__(self):
        # Imported here so that building a config does not read the GLUE registry at import.
        from elang_jax.data import GLUE_TASKS

        if self.task not in GLUE_TASKS:
            raise ValueError(f"unknown task {self.task=}; valid tasks: {', '.join(GLUE_TASKS)}")
        if self.model_dir is not None:
            object.__setattr__(self, "model_dir", os.fspath(self.model_dir))
            if self.model_config is not None:
                raise ValueError(
                    f"give model_dir or model_config, not both: {self.model_dir=} already "
                    "fixes the architecture"
                )
        elif self.model_config is None:
            raise ValueError("model_dir and model_config are both None: give one")
        elif not isinstance(self.model_config, BertConfig):
            raise ValueError(f"model_config must be a BertConfig, got {type(self.model_config)}")
        if self.tokenizer_dir is not None:
            object.__setattr__(self, "tokenizer_dir", os.fspath(self.tokenizer_dir))
        elif self.model_dir is None:
            raise ValueError("tokenizer_dir is None and there is no model_dir to take it from")
        if self.num_labels is not None and self.num_labels < 2:
            raise ValueError(f"num_labels must be >= 2, got {self.num_labels=}")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout=}")

        object.__setattr__(self, "buckets", tuple(self.buckets))
        if not self.buckets or any(
            not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.buckets
        ):
            raise ValueError(f"buckets must be positive integers, got {self.buckets=}")
        if any(a >= b for a, b in zip(self.buckets, self.buckets[1:], strict=False)):
            raise ValueError(f"buckets must be strictly ascending, got {self.buckets=}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be positive, got {self.max_length=}")
        if self.buckets[-1] < self.max_length:
            raise ValueError(
                f"the largest bucket must hold max_length, got {self.buckets=} {self.max_length=}"
            )

        for name in ("batch_size", "eval_batch_size", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {name}={getattr(self, name)}")
        for name in ("eval_every", "save_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={getattr(self, name)}")
        try:
            object.__setattr__(self, "holdout_kind", HoldoutKind(self.holdout_kind))
        except ValueError:
            raise ValueError(
                f"holdout_kind must be one of {[k.value for k in HoldoutKind]}, "
                f"got {self.holdout_kind=}"
            ) from None
        if self.holdout < 0 or self.holdout_seed < 0:
            raise ValueError(f"holdout and holdout_seed must be >= 0, got {self.holdout=}")
        try:
            object.__setattr__(self, "data_source", DataSource(self.data_source))
        except ValueError:
            raise ValueError(
                f"data_source must be one of {[s.value for s in DataSource]}, "
                f"got {self.data_source=}"
            ) from None
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive or None, got {self.max_minutes=}")
        for name in ("max_steps", "train_limit", "eval_limit", "num_layers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive or None, got {name}={value}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate=}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio=}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay=}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm=}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs=}")
        try:
            object.__setattr__(self, "schedule", Schedule(self.schedule))
        except ValueError:
            raise ValueError(
                f"schedule must be one of {[s.value for s in Schedule]}, got {self.schedule=}"
            ) from None
        splits = ("train", "dev", "test")
        for name in ("train_split", "eval_split"):
            if getattr(self, name) not in splits:
                raise ValueError(f"{name} must be one of {splits}, got {getattr(self, name)!r}")

    def replace(self, **kw: Any) -> FinetuneConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **kw)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable description (the model config as a dict of its fields)."""
        return config_json(self)

    def trajectory_fields(self) -> dict[str, Any]:
        """The fields that decide the parameters a run produces, as JSON values.

        A run resumes a checkpoint only if these match the checkpoint's run.
        """
        return {k: v for k, v in self.to_json().items() if k not in _RESUMABLE_FIELDS}


def sst2_minilm(model_dir: str | os.PathLike[str] | None = None, **kw: Any) -> FinetuneConfig:
    """all-MiniLM-L6-v2 on SST-2, sized to finish in about 40 minutes on 2 CPU cores.

    SST-2 training examples are short phrases (median 10 tokens, 99th percentile 44, longest
    66), so batches are grouped by length and padded to fine buckets: about 1.15M padded tokens
    per epoch instead of 8.6M at a fixed length of 128. The 4 examples longer than 64 tokens
    are truncated; dev examples all fit (longest 55). 2,000 training examples are held out
    for calibrating thresholds later. Measured on the 2-core CPU, sharing it with other jobs:
    2 epochs (4,086 steps) in 41 minutes, 89.33% SST-2 dev accuracy.

    Args:
      model_dir: the MiniLM Hugging Face directory; None finds it with `minilm_l6_dir()`.
      **kw: fields to override.
    """
    if model_dir is None:
        from elang_jax.checkpoints import minilm_l6_dir

        model_dir = minilm_l6_dir()
    base: dict[str, Any] = dict(
        task="sst2",
        model_dir=os.fspath(model_dir),
        max_length=64,
        buckets=(8, 16, 24, 32, 48, 64),
        batch_size=32,
        learning_rate=1e-4,
        warmup_ratio=0.06,
        weight_decay=0.01,
        clip_norm=1.0,
        epochs=2.0,
        holdout=1500,
        holdout_kind=HoldoutKind.SENTENCES,
        eval_every=500,
        save_every=250,
        log_every=25,
    )
    return FinetuneConfig(**{**base, **kw})


def tiny(tokenizer_dir: str | os.PathLike[str], **kw: Any) -> FinetuneConfig:
    """A seconds-long run for tests: a 2-layer, 32-wide random model on a few SST-2 rows.

    Args:
      tokenizer_dir: tokenizer directory (the model's vocabulary is sized to it by the caller
        through `model_config`, or defaults to BERT's 30522 word pieces).
      **kw: fields to override.
    """
    base: dict[str, Any] = dict(
        task="sst2",
        model_config=BertConfig.tiny(vocab_size=30522, max_position_embeddings=64),
        tokenizer_dir=os.fspath(tokenizer_dir),
        max_length=64,
        buckets=(16, 32, 64),
        batch_size=8,
        eval_batch_size=16,
        learning_rate=1e-3,
        warmup_ratio=0.1,
        epochs=1.0,
        save_every=0,
        log_every=5,
        progress=False,
        train_limit=64,
        eval_limit=64,
    )
    return FinetuneConfig(**{**base, **kw})
