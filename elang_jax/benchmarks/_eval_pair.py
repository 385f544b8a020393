"""E-LANG where it was made to work (eval/pair_sst2.py): a 12-layer MPNet-base Super behind a
MiniLM-L6 Swift, each with its own tokenizer.

Both models are fine-tuned on the task's training split without the demo's calibration
holdout (for SST-2: 1,500 whole training sentences, their phrases removed from training), or
loaded from `<elang_jax cache>/pair/<task>/{super,swift}` (`_pair_models`). The Swift recipe
is the demo's (its Super: all six MiniLM layers), so a demo run's fine-tuned Super can be
adopted as this Swift. Thresholds of the E-LANG energy and TangoBERT max-prob cascades are
chosen on the calibration split at the demo's target (accuracy at most `epsilon` below
Super's there), never on dev; dev only reports.

Every dev number comes from the compiled cascade step (`Cascade.serving_step`) run on
per-tier inputs: each batch holds the same examples tokenized by each tier's tokenizer,
padded to each tier's own length bucket. The step, Swift alone and Super alone run on the
same batches, and each is timed against Super's compiled forward, interleaved round by round
(`elang_jax.timing.time_against_reference`). The FLOP speed-up is the analytic ideal: Super
FLOPs over Swift FLOPs plus the escalated examples' Super FLOPs, each model at its own padded
batch length, without bucket rounding of the escalated rows.

Shape vocabulary: n examples, c classes, b batch rows, v valid rows of a batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jaxtyping import Int

from elang_jax import data as D
from elang_jax import training
from elang_jax.benchmarks._pair_models import Finetuned, PairModel, finetune, finetune_config
from elang_jax.benchmarks._pair_models import base_checkpoint as _base
from elang_jax.calibration import CalibrationTarget
from elang_jax.cascade import Cascade, Tier, TierConfig, calibrate_two_tier
from elang_jax.demo._sections import CalibrationSection, FinetuneSection
from elang_jax.flops import classifier_flops
from elang_jax.models import BertConfig
from elang_jax.routing import Score, score
from elang_jax.timing import batch_inputs, logits_fn, time_against_reference

ROLES = ("super", "swift")
# (row name, Swift's escalation score)
PAIR_METHODS = (("E-LANG energy", "energy"), ("TangoBERT max-prob", "max_prob"))
SUPER_ROW, SWIFT_ROW = "Super alone", "Swift alone"

# The Super recipe, sized for about 20 minutes on 2 CPU cores (MPNet-base trains at roughly
# a tenth of MiniLM's examples/s): the demo's recipe on half its phrases, at a learning rate
# suited to a base-size model.
SUPER_FINETUNE = FinetuneSection(train_examples=8000, learning_rate=8e-5)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairEvalConfig:
    """What eval/pair_sst2.py runs: fine-tuning both models, calibration, dev, timing.

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
      eval_buckets: padded lengths of evaluation batches (per tier).
      eval_limit: evaluate on the first this many dev examples; None: all.
      cascade_buckets: escalated rows are packed into buckets of b/n, 2b/n, ..., b rows
        (plus the empty bucket) for n = this (the demo's 4).
      timing_rounds: interleaved timing rounds (the median ratio is reported).
      timing_batches: time on this many dev batches evenly spread over the length-sorted
        batches; None: all of them. Accuracy and FLOPs always cover the whole split.
      cache_dir: where the fine-tuned models live; None: `<elang_jax cache>/pair/<task>`.
      swift_from: a finished fine-tuning run directory (the demo's `<cache>/super`) to adopt
        as the Swift when it ran exactly the Swift recipe; None: `<elang_jax
        cache>/demo/<task>/super` if there is one. Ignored once the Swift is cached.
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
    eval_buckets: tuple[int, ...] = (16, 32, 64)
    eval_limit: int | None = None
    cascade_buckets: int = 4
    timing_rounds: int = 3
    timing_batches: int | None = None
    cache_dir: str | None = None
    swift_from: str | None = None
    progress: bool = True

    def __post_init__(self):
        for name in ("super_", "swift"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, PairModel(**value))
            elif not isinstance(value, PairModel):
                raise ValueError(f"{name} must be a PairModel or a mapping, got {value!r}")
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
        for name in ("cache_dir", "swift_from"):
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

    @classmethod
    def full(cls, *, super_recipe: Mapping[str, Any] | None = None, **kw: Any) -> PairEvalConfig:
        """The real run: the defaults, with `super_recipe` changing fields of Super's
        `SUPER_FINETUNE` recipe (e.g. `{"train_examples": 4000}` when time is short)."""
        recipe = dataclasses.replace(SUPER_FINETUNE, **dict(super_recipe or {}))
        return cls(super_=PairModel(finetune=recipe), **kw)

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
            progress=False,
        )
        return cls(**{**base, **kw})


# ----------------------------------------------------------------------------------------------
# Fine-tuning


def finetune_configs(config: PairEvalConfig) -> dict[str, training.FinetuneConfig]:
    """Each role's `FinetuneConfig` (what its cached run must have run)."""
    out = {}
    for role in ROLES:
        spec = config.super_ if role == "super" else config.swift
        out[role] = finetune_config(
            spec,
            _base(role, spec),
            task=config.task,
            max_length=config.max_length,
            seed=config.seed,
            eval_batch_size=config.batch_size,
            # Fine-tuning always reports on all of dev: `eval_limit` must not change which
            # cached run is reused.
            eval_limit=None,
            holdout=config.calibration.holdout,
            holdout_seed=config.calibration.holdout_seed,
            holdout_kind=config.calibration.holdout_kind,
            progress=config.progress,
        )
    return out


def finetune_pair(config: PairEvalConfig) -> dict[str, Finetuned]:
    """Both models fine-tuned (or loaded from the cache; the Swift perhaps adopted)."""
    fts = finetune_configs(config)
    adopt = config.swift_from
    if adopt is None and config.cache_dir is None:
        from elang_jax.checkpoints import cache_dir

        adopt = os.fspath(cache_dir() / "demo" / config.task / "super")
    # Swift first: adopting or training it takes minutes, Super is the long part.
    swift = finetune("swift", fts["swift"], config.cache_path / "swift", adopt)
    return {"super": finetune("super", fts["super"], config.cache_path / "super"), "swift": swift}


# ----------------------------------------------------------------------------------------------
# Per-tier batches


def paired_batches(
    encodings: Mapping[str, D.Encoded], lead: str, batch_size: int, buckets: D.LengthBuckets
) -> list[dict[str, D.Batch]]:
    """Batches holding the same examples in every encoding (one per tier's tokenizer).

    Rows are grouped by the `lead` encoding's lengths (length-sorted, longest first, as for
    a single model); each encoding's batch of those rows is padded to its own bucket. Every
    batch's `index` holds the dataset rows, the same in every encoding.
    """
    sizes = {k: len(e) for k, e in encodings.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"encodings differ in size: {sizes}")
    out = []
    for lead_batch in D.iterate_batches(
        encodings[lead], batch_size, buckets, shuffle=False, sort_by_length=True
    ):
        rows = np.asarray(lead_batch.index)[np.asarray(lead_batch.valid)]
        pair = {}
        for k, e in encodings.items():
            # One unsorted batch of exactly these rows, in this order; index back to the
            # dataset's rows.
            (b,) = D.iterate_batches(e.select(rows), batch_size, buckets, shuffle=False)
            index = np.where(b.valid, rows[np.maximum(b.index, 0)], -1).astype(np.int32)
            pair[k] = dataclasses.replace(b, index=index)
        out.append(pair)
    return out


def _outputs(
    fn: Callable[[dict[str, D.Batch]], Any], batches: Sequence[dict[str, D.Batch]], n: int
) -> np.ndarray:
    # fn's [b, ...] outputs over batches, valid rows only, back in dataset order.
    idx, vals = [], []
    for b in batches:
        lead = next(iter(b.values()))
        idx.append(lead.index[lead.valid])
        vals.append(np.asarray(fn(b))[lead.valid])
    return D.restore_order(idx, vals, n)


def _flops(cfg: BertConfig, batches: Sequence[dict[str, D.Batch]], role: str) -> float:
    # Every valid row of `role`'s batches, each at its batch's padded length.
    return float(
        sum(b[role].num_valid * classifier_flops(cfg, b[role].input_ids.shape[1]) for b in batches)
    )


def _accuracy(pred: Int[np.ndarray, " n"], labels: Int[np.ndarray, " n"]) -> float:
    return float((pred == labels).mean())


# ----------------------------------------------------------------------------------------------
# The evaluation


def evaluate_pair(
    config: PairEvalConfig, models: Mapping[str, Finetuned] | None = None
) -> dict[str, Any]:
    """Fine-tunes (or loads) both models, calibrates every method of `PAIR_METHODS` on the
    held-out split, runs their compiled cascade steps on dev, and times every row against
    Super alone.

    Args:
      config: what to run.
      models: the fine-tuned pair, if already at hand (else `finetune_pair(config)`).

    Returns:
      {"args": the config, "finetune": per role what `Finetuned.summary` says, "task",
      "dev_examples", "calib_examples", "device", "rows": one dict per method (Super alone,
      Swift alone, then the cascades) with accuracy, to_super, flop_speedup,
      measured_speedup, pass_ms, and for cascades the threshold, the calibration
      accuracies, target_met, measured_over_flop and the agreement of the compiled step
      with the offline rule on the same logits; "predictions": method -> [n] dev
      predictions; "dev_labels": [n]; "goals": the issue's goals and whether they are met}.
    """
    models = dict(models) if models is not None else finetune_pair(config)
    cfg = {k: m.model.config for k, m in models.items()}
    train = D.read_glue(config.task, "train")
    _, held = D.calibration_split(
        train,
        config.calibration.holdout,
        config.calibration.holdout_seed,
        config.calibration.holdout_kind,
    )
    dev = D.read_glue(config.task, "dev")
    if config.eval_limit is not None and config.eval_limit < len(dev):
        dev = D.select_examples(dev, np.arange(config.eval_limit))
    buckets = D.LengthBuckets(config.eval_buckets)

    def encode(examples: D.GlueExamples) -> dict[str, D.Encoded]:
        # Each tier its own tokenizer (MPNet's and MiniLM's word pieces differ).
        return {
            k: D.encode_glue(
                m.tokenizer,
                examples,
                config.max_length,
                truncate=True,
                vocab_size=cfg[k].vocab_size,
            )
            for k, m in models.items()
        }

    calib_enc = encode(D.select_examples(train, held))
    dev_enc = encode(dev)
    y_cal, y_dev = calib_enc["super"].labels, dev_enc["super"].labels
    assert y_cal is not None and y_dev is not None  # GLUE train and dev are labelled
    calib_batches = paired_batches(calib_enc, "super", config.batch_size, buckets)
    dev_batches = paired_batches(dev_enc, "super", config.batch_size, buckets)

    fns = {k: logits_fn(m.model) for k, m in models.items()}
    # Each takes a dict of per-tier batches (typed Any: the timing's batches are opaque).
    forwards: dict[str, Callable[[Any], Any]] = {
        SUPER_ROW: lambda b: fns["super"](b["super"]),
        SWIFT_ROW: lambda b: fns["swift"](b["swift"]),
    }
    logits = {
        k: {
            "calib": _outputs(forwards[row], calib_batches, len(y_cal)),
            "dev": _outputs(forwards[row], dev_batches, len(y_dev)),
        }
        for k, row in (("super", SUPER_ROW), ("swift", SWIFT_ROW))
    }
    super_flops = _flops(cfg["super"], dev_batches, "super")
    predictions = {
        SUPER_ROW: logits["super"]["dev"].argmax(-1),
        SWIFT_ROW: logits["swift"]["dev"].argmax(-1),
    }
    rows: list[dict[str, Any]] = [
        dict(method=SUPER_ROW, to_super=1.0, flop_speedup=1.0),
        dict(
            method=SWIFT_ROW,
            to_super=0.0,
            flop_speedup=super_flops / _flops(cfg["swift"], dev_batches, "swift"),
        ),
    ]

    # Swift's cost relative to Super's on each calibration example, each at its own length.
    ratio = np.array(
        [
            classifier_flops(cfg["swift"], int(a)) / classifier_flops(cfg["super"], int(b))
            for a, b in zip(calib_enc["swift"].lengths, calib_enc["super"].lengths, strict=True)
        ]
    )
    n, eps = config.cascade_buckets, config.calibration.epsilon
    for name, kind in PAIR_METHODS:
        op = calibrate_two_tier(
            logits["swift"]["calib"],
            logits["super"]["calib"],
            y_cal,
            kind,
            config.target,
            swift_cost=ratio,
        )
        threshold = float(op.setting[0])
        cascade = Cascade(
            [
                Tier(
                    models["swift"].model,
                    TierConfig(name="swift", score=Score(kind), threshold=threshold),
                ),
                Tier(models["super"].model, TierConfig(name="super")),
            ],
            bucket_fractions=tuple(i / n for i in range(n + 1)),
        )
        step = cascade.serving_step(config.batch_size)

        def forward(b: dict[str, D.Batch], step=step) -> Any:
            # Tier order: Swift's inputs, then Super's (same rows, own tokenization).
            return step(
                [batch_inputs(b["swift"]), batch_inputs(b["super"])], valid=b["super"].valid
            )

        forwards[name] = forward
        idx, preds, tiers = [], [], []
        flops = _flops(cfg["swift"], dev_batches, "swift")
        for b in dev_batches:  # compiles every batch shape once, before the timing
            out, v = forward(b), b["super"].valid
            idx.append(b["super"].index[v])
            preds.append(np.asarray(out.predictions)[v])
            tiers.append(np.asarray(out.tier)[v])
            t = b["super"].input_ids.shape[1]
            flops += float((tiers[-1] == 1).sum()) * classifier_flops(cfg["super"], t)
        pred = D.restore_order(idx, preds, len(y_dev))
        tier = D.restore_order(idx, tiers, len(y_dev))
        # The compiled path must agree with the offline rule on the offline logits.
        offline = np.where(np.asarray(score(kind, logits["swift"]["dev"])) >= threshold, 0, 1)
        predictions[name] = pred
        rows.append(
            dict(
                method=name,
                score=kind,
                to_super=float(tier.mean()),
                flop_speedup=super_flops / flops,
                threshold=threshold,
                calib_accuracy=op.accuracy,
                calib_super_accuracy=op.reference_accuracy,
                target_met=bool(op.accuracy >= op.reference_accuracy - eps - 1e-12),
                offline_agreement=_accuracy(offline, tier),
            )
        )
    for r in rows:
        r["accuracy"] = _accuracy(predictions[r["method"]], y_dev)

    timed = _timing_subset(dev_batches, config.timing_batches)
    timings = time_against_reference(
        forwards[SUPER_ROW],
        {k: f for k, f in forwards.items() if k != SUPER_ROW},
        timed,
        config.timing_rounds,
        compiled=True,  # every function has run on every batch shape above
    )
    for r in rows:
        t = timings.get(r["method"])
        if t is None:  # Super alone: the reference
            r["measured_speedup"] = 1.0
            r["pass_ms"] = next(iter(timings.values())).reference_seconds * 1e3
        else:
            r["measured_speedup"] = t.speedup
            r["pass_ms"] = t.seconds * 1e3
            r["speedup_rounds"] = list(t.rounds)
        if "threshold" in r:
            r["measured_over_flop"] = r["measured_speedup"] / r["flop_speedup"]
    return dict(
        args=config,
        task=config.task,
        finetune={k: m.summary() for k, m in models.items()},
        dev_examples=len(y_dev),
        calib_examples=len(y_cal),
        timing_batches=len(timed),
        device=str(jax.devices()[0]),
        rows=rows,
        predictions=predictions,
        dev_labels=y_dev,
        goals=goals(rows),
    )


def _timing_subset(batches: Sequence[Any], limit: int | None) -> list[Any]:
    # `limit` batches evenly spread over the length-sorted batches: every length represented.
    if limit is None or limit >= len(batches):
        return list(batches)
    picks = np.unique(np.linspace(0, len(batches) - 1, limit).round().astype(int))
    return [batches[i] for i in picks]


# The goals for the E-LANG energy cascade.
MAX_ACCURACY_DROP = 0.003
MIN_MEASURED_SPEEDUP = 3.0
MIN_MEASURED_OVER_FLOP = 0.9


def goals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's goals for the E-LANG energy row: at most 0.3 points below Super on dev,
    at least 3x measured speed-up, measured/FLOP speed-up at least 0.9."""
    by = {r["method"]: r for r in rows}
    e, s = by["E-LANG energy"], by[SUPER_ROW]
    drop = s["accuracy"] - e["accuracy"]
    return dict(
        accuracy_drop=drop,
        accuracy_drop_met=bool(drop <= MAX_ACCURACY_DROP + 1e-12),
        measured_speedup=e["measured_speedup"],
        measured_speedup_met=bool(e["measured_speedup"] >= MIN_MEASURED_SPEEDUP),
        measured_over_flop=e["measured_over_flop"],
        measured_over_flop_met=bool(e["measured_over_flop"] >= MIN_MEASURED_OVER_FLOP),
    )


def format_pair(result: Mapping[str, Any]) -> str:
    """`evaluate_pair`'s result as a table, with the fine-tuning facts and the goals."""
    c: PairEvalConfig = result["args"]
    lines = []
    for role, f in result["finetune"].items():
        ft = (c.super_ if role == "super" else c.swift).finetune
        acc, secs = f["dev_accuracy"], f["train_seconds"]
        examples = (f["steps"] or 0) * ft.batch_size
        timing = (
            ""
            if not secs
            else f", {secs / 60:.1f} min of training ({examples / secs:.1f} examples/s overall)"
        )
        how = (
            f"adopted from {f['adopted_from']}"
            if f["adopted_from"]
            else ("cached" if f["cached"] else "fine-tuned now")
        )
        lines.append(
            f"{role}: {f['model_type']} {f['num_layers']}x{f['hidden_size']}, {how}; "
            f"{f['steps']} steps of {ft.batch_size} (lr {ft.learning_rate:g}){timing}; "
            f"dev accuracy {'?' if acc is None else f'{100 * acc:.2f}'}"
        )
    lines += [
        f"task {result['task']}, dev {result['dev_examples']} examples, calibration = "
        f"{result['calib_examples']} held-out train examples ({c.calibration.holdout_kind}), "
        f"target accuracy epsilon {c.calibration.epsilon}, batch {c.batch_size}, timing "
        f"{c.timing_rounds} rounds x {result['timing_batches']} batches, "
        f"device {result['device']}",
        f"{'method':<20} {'acc':>6} {'->Super':>8} {'FLOP x':>7} {'meas. x':>8} "
        f"{'meas/FLOP':>9} {'threshold':>10}",
    ]
    for r in result["rows"]:
        ratio = r.get("measured_over_flop")
        th = r.get("threshold")
        lines.append(
            f"{r['method']:<20} {100 * r['accuracy']:6.2f} {100 * r['to_super']:7.1f}% "
            f"{r['flop_speedup']:7.2f} {r['measured_speedup']:8.2f} "
            f"{'' if ratio is None else f'{ratio:9.2f}'}"
            f"{'' if th is None else f' {th:10.4f}'}"
        )
    g = result["goals"]

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines.append(
        f"goals (E-LANG energy): accuracy drop {100 * g['accuracy_drop']:.2f} points "
        f"(<= {100 * MAX_ACCURACY_DROP:.1f}: {met(g['accuracy_drop_met'])}); measured "
        f"{g['measured_speedup']:.2f}x (>= {MIN_MEASURED_SPEEDUP:.0f}x: "
        f"{met(g['measured_speedup_met'])}); measured/FLOP {g['measured_over_flop']:.2f} "
        f"(>= {MIN_MEASURED_OVER_FLOP}: {met(g['measured_over_flop_met'])})"
    )
    return "\n".join(lines)
