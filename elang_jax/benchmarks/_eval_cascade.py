"""Swift/Super cascades on a GLUE task (eval/bench_cascade.py): accuracy, share sent to
Super, FLOP and measured speed-up, for several published escalation scores.

Thresholds are chosen on a held-out part of the training split (the same split the models
were fine-tuned without; the defaults are the sst2_minilm preset's 1,500 whole sentences),
and every number is reported on the dev split. The compiled cascade steps, each Swift alone
and Super alone run on the same padded, length-sorted dev batches in one process, timed
together by `elang_jax.timing.time_interleaved` (one call: a pass over the batches), so a
measured ratio compares like with like. The FLOP speed-up is the analytic ideal: Super
FLOPs over Swift FLOPs plus the escalated examples' Super FLOPs, at the padded batch
length, without bucket rounding.

Shape vocabulary: n examples, c classes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from elang_jax import data as D
from elang_jax.calibration import CalibrationTarget, Objective
from elang_jax.cascade import Cascade, Tier, TierConfig, calibrate_two_tier, dataset_logits
from elang_jax.flops import classifier_flops
from elang_jax.models import BertForSequenceClassification
from elang_jax.routing import Score, score
from elang_jax.timing import batch_inputs, logits_fn, over_batches, time_interleaved

# (row name, Swift model key, escalation score, note)
CASCADE_METHODS = (
    ("E-LANG energy", "swift", "energy", "-F = T logsumexp(z/T), T=1"),
    ("E-LANG released code", "swift", "softmax_lse", "logsumexp of probabilities"),
    ("TangoBERT max-prob", "swift", "max_prob", ""),
    ("CascadeBERT (no DAR)", "swift", "max_prob", "complete-model cascade, CE only"),
    ("CascadeBERT (DAR)", "swift_dar", "max_prob", "Swift trained with CE + DAR"),
)
LENGTH_BUCKETS = (16, 32, 64, 128)
REFERENCE = "Super alone"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CascadeEvalConfig:
    """What eval/bench_cascade.py evaluates.

    Attributes:
      super_dir: the fine-tuned Super model (Hugging Face directory).
      swift_dir: the fine-tuned Swift model.
      swift_dar_dir: a Swift trained with CascadeBERT's difficulty-aware loss, or None.
      task: GLUE task name.
      holdout: training examples held out for calibration.
      holdout_seed: their seed.
      holdout_kind: "random" or "sentences" (`elang_jax.data.HoldoutKind`).
      batch_size: rows of every padded dev batch.
      objective: "accuracy" or "guarantee" (`CalibrationTarget`).
      epsilon: accuracy drop allowed on the calibration split.
      delta: failure probability of the guarantee.
      repeats: timing rounds.
    """

    super_dir: str
    swift_dir: str
    swift_dar_dir: str | None = None
    task: str = "sst2"
    holdout: int = 1500
    holdout_seed: int = 0
    holdout_kind: str = "sentences"
    batch_size: int = 64
    objective: str = "accuracy"
    epsilon: float = 0.0
    delta: float = 0.1
    repeats: int = 5

    def __post_init__(self):
        for name in ("holdout", "batch_size", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")

    @property
    def target(self) -> CalibrationTarget:
        return CalibrationTarget(
            objective=Objective(self.objective), epsilon=self.epsilon, delta=self.delta
        )


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def evaluate_cascades(config: CascadeEvalConfig) -> dict[str, Any]:
    """Calibrates every method of `CASCADE_METHODS` on the held-out split, runs its compiled
    cascade step on dev, and times everything against Super alone.

    Returns:
      {"args": the config, "dev_examples", "device", "rows": one dict per method (Super
      alone and each Swift alone first) with accuracy, to_super, flop_speedup,
      measured_speedup (Super's median pass over this one's), pass_ms, and for cascades
      the threshold, the calibration accuracies and the agreement of the compiled step with
      the offline simulation}.
    """
    from elang_jax.hf import from_pretrained

    dirs = {"super": config.super_dir, "swift": config.swift_dir}
    if config.swift_dar_dir:
        dirs["swift_dar"] = config.swift_dar_dir
    models: dict[str, BertForSequenceClassification] = {}
    for k, v in dirs.items():
        model = from_pretrained(v)
        assert isinstance(model, BertForSequenceClassification), (k, type(model).__name__)
        models[k] = model
    tokenizer = D.load_tokenizer(config.super_dir)
    buckets = D.LengthBuckets(lengths=LENGTH_BUCKETS)
    train = D.read_glue(config.task, "train")
    _, held = D.calibration_split(train, config.holdout, config.holdout_seed, config.holdout_kind)
    calib = D.encode_glue(tokenizer, D.select_examples(train, held), 128)
    dev = D.encode_glue(tokenizer, D.read_glue(config.task, "dev"), 128)

    cfg = {k: m.config for k, m in models.items()}
    logits = {
        k: {
            "calib": dataset_logits(m, calib, 64, buckets),
            "dev": dataset_logits(m, dev, 64, buckets),
        }
        for k, m in models.items()
    }
    y_cal, y_dev = calib.labels, dev.labels
    # GLUE train and dev splits are labelled (only test splits are not).
    assert y_cal is not None and y_dev is not None
    dev_batches = list(
        D.iterate_batches(dev, config.batch_size, buckets, shuffle=False, sort_by_length=True)
    )

    def dev_flops(key: str) -> float:
        return float(
            sum(b.num_valid * classifier_flops(cfg[key], b.input_ids.shape[1]) for b in dev_batches)
        )

    super_flops = dev_flops("super")
    passes = {REFERENCE: over_batches(logits_fn(models["super"]), dev_batches)}
    rows: list[dict[str, Any]] = [
        dict(
            method=REFERENCE,
            accuracy=_accuracy(logits["super"]["dev"], y_dev),
            to_super=1.0,
            flop_speedup=1.0,
        )
    ]
    for key in [k for k in models if k != "super"]:
        name = f"{key} alone"
        passes[name] = over_batches(logits_fn(models[key]), dev_batches)
        rows.append(
            dict(
                method=name,
                accuracy=_accuracy(logits[key]["dev"], y_dev),
                to_super=0.0,
                flop_speedup=super_flops / dev_flops(key),
            )
        )

    for name, key, kind, note in CASCADE_METHODS:
        if key not in models:
            continue
        sup_f = np.array([classifier_flops(cfg["super"], int(n)) for n in calib.lengths], float)
        sw_f = np.array([classifier_flops(cfg[key], int(n)) for n in calib.lengths], float)
        op = calibrate_two_tier(
            logits[key]["calib"],
            logits["super"]["calib"],
            y_cal,
            kind,
            config.target,
            swift_cost=sw_f / sup_f,
        )
        threshold = float(op.setting[0])
        cascade = Cascade(
            [
                Tier(models[key], TierConfig(name=key, score=Score(kind), threshold=threshold)),
                Tier(models["super"], TierConfig(name="super")),
            ],
            bucket_fractions=tuple(i / 16 for i in range(17)),
        )
        step = cascade.serving_step(config.batch_size)

        def run(b, step=step):
            return step(batch_inputs(b), valid=b.valid)

        preds, tiers, idx = [], [], []
        flops = 0.0
        for b in dev_batches:
            out = run(b)
            v = b.valid
            preds.append(np.asarray(out.predictions)[v])
            tiers.append(np.asarray(out.tier)[v])
            idx.append(b.index[v])
            t = b.input_ids.shape[1]
            flops += v.sum() * classifier_flops(cfg[key], t)
            flops += (np.asarray(out.tier)[v] == 1).sum() * classifier_flops(cfg["super"], t)
        pred = D.restore_order(idx, preds, len(dev))
        tier = D.restore_order(idx, tiers, len(dev))
        # The compiled path must agree with the offline simulation on the same logits.
        offline = np.where(np.asarray(score(kind, logits[key]["dev"])) >= threshold, 0, 1)
        passes[name] = over_batches(run, dev_batches)
        rows.append(
            dict(
                method=name,
                accuracy=float((pred == y_dev).mean()),
                to_super=float(tier.mean()),
                flop_speedup=super_flops / flops,
                threshold=threshold,
                calib_accuracy=op.accuracy,
                calib_super_accuracy=op.reference_accuracy,
                offline_agreement=float((offline == tier).mean()),
                note=note,
            )
        )

    timings = time_interleaved(passes, config.repeats)
    super_ms = timings[REFERENCE].median_ms
    for r in rows:
        ms = timings[r["method"]].median_ms
        r["pass_ms"] = ms
        r["measured_speedup"] = super_ms / ms
        if "threshold" in r:
            r["measured_over_flop"] = r["measured_speedup"] / r["flop_speedup"]
    return dict(args=config, dev_examples=len(dev), device=str(jax.devices()[0]), rows=rows)


def format_cascades(result: dict[str, Any]) -> str:
    """`evaluate_cascades`'s result as a table."""
    c: CascadeEvalConfig = result["args"]
    target = f"{c.objective} epsilon {c.epsilon}"
    if c.objective == "guarantee":
        target += f" delta {c.delta}"
    lines = [
        f"task {c.task}, dev {result['dev_examples']} examples, calibration = {c.holdout} "
        f"held-out train examples ({c.holdout_kind}), target {target}, batch {c.batch_size}, "
        f"device {result['device']}",
        f"{'method':<24} {'acc':>6} {'->Super':>8} {'FLOP x':>7} {'meas. x':>8} {'meas/FLOP':>9}",
    ]
    for r in result["rows"]:
        ratio = r.get("measured_over_flop")
        lines.append(
            f"{r['method']:<24} {100 * r['accuracy']:6.2f} {100 * r['to_super']:7.1f}% "
            f"{r['flop_speedup']:7.2f} {r['measured_speedup']:8.2f} "
            f"{'' if ratio is None else f'{ratio:9.2f}'}"
        )
    return "\n".join(lines)
