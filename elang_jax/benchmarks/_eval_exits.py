"""Multi-exit MiniLM on a GLUE task (eval/bench_exits.py): accuracy against layers used, and
the batched exit step's measured speed-up against the full model, in one run.

DeeBERT's recipe on a fine-tuned classifier: its backbone and final head stay frozen, and an
off-ramp (pooler + classifier, the pooler initialised from the final one) after every other
layer is trained on the frozen features ([CLS] or the mean over tokens) of some training
examples. Per-exit temperatures and every policy's threshold are chosen on the held-out
calibration split (the one the model was fine-tuned without); everything is reported on
dev. For each policy the compiled exit step and the full model run on the same padded dev
batches, timed together by `elang_jax.timing.time_interleaved` (one call: a pass over the
batches); the ideal speed-up is the layer count over the mean layers used. Each policy is
timed in its own run because the step reads the temperatures live, and they change between
policies.

Shape vocabulary: e exits, n examples, c classes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from elang_jax import data as D
from elang_jax.calibration import CalibrationTarget
from elang_jax.exits import (
    ExitTrainConfig,
    MultiExit,
    MultiExitConfig,
    calibrate_exits,
    collect_features,
    dataset_exit_logits,
    exit_scores,
    fit_exit_temperatures,
    simulate_exits,
    train_exit_heads,
)
from elang_jax.models import BertForSequenceClassification
from elang_jax.timing import batch_inputs, logits_fn, over_batches, time_interleaved

# (row name, policy, use the fitted temperatures)
EXIT_POLICIES = (
    ("DeeBERT entropy", "entropy", False),
    ("PABEE patience", "patience", False),
    ("calibrated max-prob", "max_prob", True),
    ("margin (calibrated)", "margin", True),
)
LENGTH_BUCKETS = (16, 32, 64, 128)
FULL = "full model"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExitsEvalConfig:
    """What eval/bench_exits.py evaluates.

    Attributes:
      model: the fine-tuned classifier (Hugging Face directory).
      task: GLUE task name.
      holdout: training examples held out for calibration.
      holdout_seed: their seed.
      holdout_kind: "random" or "sentences" (`elang_jax.data.HoldoutKind`).
      train_limit: training examples the off-ramps are trained on.
      epochs: off-ramp training epochs.
      pooling: the off-ramps' input, "cls" or "mean".
      epsilon: accuracy drop allowed on the calibration split.
      batch_size: rows of every padded dev batch.
      repeats: timing rounds per policy.
    """

    model: str
    task: str = "sst2"
    holdout: int = 1500
    holdout_seed: int = 0
    holdout_kind: str = "sentences"
    train_limit: int = 16000
    epochs: float = 4.0
    pooling: str = "mean"
    epsilon: float = 0.0
    batch_size: int = 64
    repeats: int = 3

    def __post_init__(self):
        for name in ("holdout", "train_limit", "batch_size", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")


def evaluate_exits(config: ExitsEvalConfig, echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Trains the off-ramps, calibrates every policy of `EXIT_POLICIES`, runs the compiled
    exit step on dev and times it against the full model.

    Args:
      echo: progress lines (off-ramp training, per-exit accuracy).

    Returns:
      {"args": the config, "dev_examples", "calib_examples", "device",
      "per_exit_accuracy", "temperatures", "rows": the full model and one dict per policy
      (accuracy, mean_layers, ideal_speedup, measured_speedup, full_ms, step_ms, ...),
      "curves": per policy, (mean layers, dev accuracy) of an offline sweep}.
    """
    from elang_jax.hf import from_pretrained

    model = from_pretrained(config.model)
    assert isinstance(model, BertForSequenceClassification), type(model).__name__
    me = MultiExit(model, MultiExitConfig(pooling=config.pooling), rngs=nnx.Rngs(0))
    exits, num_layers = me.exit_layers, model.config.num_layers
    tokenizer = D.load_tokenizer(config.model)
    length_buckets = D.LengthBuckets(LENGTH_BUCKETS)
    train = D.read_glue(config.task, "train")
    kept, held = D.calibration_split(
        train, config.holdout, config.holdout_seed, config.holdout_kind
    )
    rng = np.random.default_rng(0)
    pick = np.sort(rng.permutation(kept)[: config.train_limit])

    def enc(examples):
        return D.encode_glue(tokenizer, examples, 128)

    fit = enc(D.select_examples(train, pick))
    calib = enc(D.select_examples(train, held))
    dev = enc(D.read_glue(config.task, "dev"))
    # GLUE train and dev splits are labelled (only test splits are not).
    assert fit.labels is not None and calib.labels is not None and dev.labels is not None
    t0 = time.perf_counter()
    feats_fit, _ = collect_features(me, fit, 64, length_buckets)
    losses = train_exit_heads(me, feats_fit, fit.labels, ExitTrainConfig(epochs=config.epochs))
    echo(
        f"off-ramps trained on {len(fit)} examples in {time.perf_counter() - t0:.0f}s, "
        f"loss {losses[-1]:.3f}"
    )

    lg_cal = dataset_exit_logits(me, calib, 64, length_buckets)
    lg_dev = dataset_exit_logits(me, dev, 64, length_buckets)
    y_cal, y_dev = calib.labels, dev.labels
    temps = fit_exit_temperatures(lg_cal, y_cal)
    per_exit = [float((lg_dev[k].argmax(-1) == y_dev).mean()) for k in range(len(exits))]
    echo(
        "dev accuracy per exit: "
        + " ".join(f"L{j}={100 * a:.2f}" for j, a in zip(exits, per_exit, strict=True))
    )

    batches = list(D.iterate_batches(dev, config.batch_size, length_buckets, shuffle=False))
    full_pass = over_batches(logits_fn(model), batches)
    rows: list[dict[str, Any]] = [
        dict(
            method=FULL,
            accuracy=per_exit[-1],
            mean_layers=float(num_layers),
            ideal_speedup=1.0,
            measured_speedup=1.0,
        )
    ]
    curves = {}
    for name, policy, calibrated in EXIT_POLICIES:
        t = temps if calibrated else np.ones(len(exits))
        op = calibrate_exits(
            lg_cal, y_cal, exits, policy, CalibrationTarget(epsilon=config.epsilon), t, num_layers
        )
        setting = float(op.setting)
        kw: dict[str, Any] = (
            dict(patience=int(setting)) if policy == "patience" else dict(threshold=setting)
        )
        sim = simulate_exits(lg_dev, exits, policy, temperatures=t, **kw)
        me.set_temperatures(t)
        step = me.exit_step(config.batch_size, policy)

        def run(b, step=step, kw=kw):
            return step(batch_inputs(b), valid=b.valid, **kw)

        idx, layers, preds = [], [], []
        for b in batches:
            out = run(b)
            idx.append(b.index[b.valid])
            layers.append(np.asarray(out.layers)[b.valid])
            preds.append(np.asarray(out.predictions)[b.valid])
        layers = D.restore_order(idx, layers, len(dev))
        preds = D.restore_order(idx, preds, len(dev))
        timings = time_interleaved(
            {FULL: full_pass, name: over_batches(run, batches)}, config.repeats
        )
        full_ms, step_ms = timings[FULL].median_ms, timings[name].median_ms
        ideal = num_layers / layers.mean()
        measured = full_ms / step_ms
        rows.append(
            dict(
                method=name,
                accuracy=float((preds == y_dev).mean()),
                mean_layers=float(layers.mean()),
                ideal_speedup=float(ideal),
                measured_speedup=float(measured),
                measured_over_ideal=float(measured / ideal),
                setting=setting,
                calib_accuracy=op.accuracy,
                calib_final_accuracy=op.reference_accuracy,
                offline_agreement=float((sim.layers == layers).mean()),
                full_ms=full_ms,
                step_ms=step_ms,
            )
        )
        curves[name] = exit_curve(lg_dev, y_dev, exits, policy, t)
    return dict(
        args=config,
        dev_examples=len(dev),
        calib_examples=len(calib),
        device=str(jax.devices()[0]),
        per_exit_accuracy=per_exit,
        temperatures=temps,
        rows=rows,
        curves=curves,
    )


def exit_curve(logits, labels, exits, policy, temps, points: int = 7) -> list[tuple[float, float]]:
    """(mean layers, accuracy) at evenly spread settings of one policy, simulated offline.

    Args:
      logits: [e n c] every exit's logits.
      labels: [n] the labels.
    """
    settings: list[dict[str, Any]]
    if policy == "patience":
        settings = [dict(patience=p) for p in range(len(exits), 0, -1)]
    else:
        s = exit_scores(logits, policy, temps)[:-1].ravel()
        settings = [dict(threshold=math.inf)] + [
            dict(threshold=float(q)) for q in np.quantile(s, np.linspace(1, 0, points))[1:]
        ]
    out = []
    for kw in settings:
        d = simulate_exits(logits, exits, policy, temperatures=temps, **kw)
        out.append((float(d.layers.mean()), float((d.predictions == labels).mean())))
    return out


def format_exits(result: dict[str, Any]) -> str:
    """`evaluate_exits`'s result as a table and the offline curves."""
    c: ExitsEvalConfig = result["args"]
    lines = [
        f"task {c.task}, dev {result['dev_examples']}, calibration {result['calib_examples']} "
        f"({c.holdout_kind}), batch {c.batch_size}, epsilon {c.epsilon}, "
        f"device {result['device']}",
        f"{'method':<22} {'acc':>6} {'layers':>6} {'ideal x':>7} {'meas. x':>7} {'meas/ideal':>10}",
    ]
    for r in result["rows"]:
        ratio = r.get("measured_over_ideal")
        lines.append(
            f"{r['method']:<22} {100 * r['accuracy']:6.2f} {r['mean_layers']:6.2f} "
            f"{r['ideal_speedup']:7.2f} {r['measured_speedup']:7.2f} "
            f"{'' if ratio is None else f'{ratio:10.2f}'}"
        )
    lines.append("dev accuracy against mean layers (offline sweep):")
    for name, pts in result["curves"].items():
        lines.append(f"  {name:<22} " + "  ".join(f"{a * 100:.1f}@{m:.2f}" for m, a in pts))
    return "\n".join(lines)
