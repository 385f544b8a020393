"""Multi-exit MiniLM on a GLUE task: accuracy against layers used, and the batched exit step's
measured speed-up against the full model, in one run.

    python eval/bench_exits.py --model runs/super/final --json runs/exits.json

DeeBERT's recipe on a fine-tuned classifier: its backbone and final head stay frozen, and an
off-ramp (pooler + classifier, the pooler initialised from the final one) after every other
layer is trained on the frozen features (`--pooling`: [CLS] or the mean over tokens) of
`--train-limit` training examples. Per-exit
temperatures and every policy's threshold are chosen on the held-out calibration split (the
one the model was fine-tuned without: `--holdout*`, default the sst2_minilm preset's 1,500
whole sentences); everything is reported on dev. The compiled exit step and the full model
run on the same padded, length-sorted dev batches of `--batch-size`, timed in one process;
the ideal speed-up is the layer count over the mean layers used. The two are timed
alternately, pass by pass, so that load on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from elang_jax import CalibrationTarget, MultiExit, MultiExitConfig, from_pretrained
from elang_jax import data as D
from elang_jax.exits import (
    ExitTrainConfig,
    calibrate_exits,
    collect_features,
    dataset_exit_logits,
    exit_scores,
    fit_exit_temperatures,
    simulate_exits,
    train_exit_heads,
)
from elang_jax.timing import batch_inputs, logits_fn, time_pair

POLICIES = (
    # (row name, policy, use fitted temperatures)
    ("DeeBERT entropy", "entropy", False),
    ("PABEE patience", "patience", False),
    ("calibrated max-prob", "max_prob", True),
    ("margin (calibrated)", "margin", True),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="fine-tuned classifier (HF directory)")
    p.add_argument("--task", default="sst2")
    p.add_argument("--holdout", type=int, default=1500)
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--holdout-kind", choices=["random", "sentences"], default="sentences")
    p.add_argument("--train-limit", type=int, default=16000, help="examples for the off-ramps")
    p.add_argument("--epochs", type=float, default=4.0, help="off-ramp training epochs")
    p.add_argument("--pooling", choices=["cls", "mean"], default="mean", help="off-ramp input")
    p.add_argument("--epsilon", type=float, default=0.0, help="accuracy drop allowed on calib")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    model = from_pretrained(args.model)
    me = MultiExit(model, MultiExitConfig(pooling=args.pooling), rngs=nnx.Rngs(0))
    exits, num_layers = me.exit_layers, model.config.num_layers
    tokenizer = D.load_tokenizer(args.model)
    length_buckets = D.LengthBuckets((16, 32, 64, 128))
    train = D.read_glue(args.task, "train")
    kept, held = D.calibration_split(train, args.holdout, args.holdout_seed, args.holdout_kind)
    rng = np.random.default_rng(0)
    pick = np.sort(rng.permutation(kept)[: args.train_limit])

    def enc(examples):
        return D.encode_glue(tokenizer, examples, 128)

    fit = enc(D.select_examples(train, pick))
    calib = enc(D.select_examples(train, held))
    dev = enc(D.read_glue(args.task, "dev"))
    t0 = time.perf_counter()
    feats_fit, _ = collect_features(me, fit, 64, length_buckets)
    losses = train_exit_heads(me, feats_fit, fit.labels, ExitTrainConfig(epochs=args.epochs))
    train_s = time.perf_counter() - t0
    print(f"off-ramps trained on {len(fit)} examples in {train_s:.0f}s, loss {losses[-1]:.3f}")

    lg_cal = dataset_exit_logits(me, calib, 64, length_buckets)
    lg_dev = dataset_exit_logits(me, dev, 64, length_buckets)
    y_cal, y_dev = calib.labels, dev.labels
    temps = fit_exit_temperatures(lg_cal, y_cal)
    per_exit = [float((lg_dev[k].argmax(-1) == y_dev).mean()) for k in range(len(exits))]
    print(
        "dev accuracy per exit:",
        " ".join(f"L{j}={100 * a:.2f}" for j, a in zip(exits, per_exit, strict=True)),
    )

    batches = list(D.iterate_batches(dev, args.batch_size, length_buckets, shuffle=False))
    run_full = logits_fn(model)

    final_acc = per_exit[-1]
    rows = [
        dict(
            method="full model",
            accuracy=final_acc,
            mean_layers=float(num_layers),
            ideal_speedup=1.0,
            measured_speedup=1.0,
        )
    ]
    curves = {}
    for name, policy, calibrated in POLICIES:
        t = temps if calibrated else np.ones(len(exits))
        op = calibrate_exits(
            lg_cal, y_cal, exits, policy, CalibrationTarget(epsilon=args.epsilon), t, num_layers
        )
        setting = float(op.setting)
        kw = dict(patience=int(setting)) if policy == "patience" else dict(threshold=setting)
        sim = simulate_exits(lg_dev, exits, policy, temperatures=t, **kw)
        me.set_temperatures(t)
        step = me.exit_step(args.batch_size, policy)

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
        full_time, step_time = time_pair(run_full, run, batches, args.repeats)
        ideal = num_layers / layers.mean()
        measured = full_time / step_time
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
                full_ms=1e3 * full_time,
                step_ms=1e3 * step_time,
            )
        )
        curves[name] = _curve(lg_dev, y_dev, exits, policy, t, num_layers)

    print(
        f"task {args.task}, dev {len(dev)}, calibration {len(calib)} ({args.holdout_kind}), "
        f"batch {args.batch_size}, epsilon {args.epsilon}, device {jax.devices()[0]}"
    )
    print(
        f"{'method':<22} {'acc':>6} {'layers':>6} {'ideal x':>7} {'meas. x':>7} {'meas/ideal':>10}"
    )
    for r in rows:
        ratio = r.get("measured_over_ideal")
        print(
            f"{r['method']:<22} {100 * r['accuracy']:6.2f} {r['mean_layers']:6.2f} "
            f"{r['ideal_speedup']:7.2f} {r['measured_speedup']:7.2f} "
            f"{'' if ratio is None else f'{ratio:10.2f}'}"
        )
    print("dev accuracy against mean layers (offline sweep):")
    for name, pts in curves.items():
        print(f"  {name:<22} " + "  ".join(f"{a * 100:.1f}@{m:.2f}" for m, a in pts))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                dict(
                    args=vars(args),
                    per_exit_accuracy=per_exit,
                    temperatures=temps.tolist(),
                    rows=rows,
                    curves=curves,
                ),
                indent=2,
            )
        )


def _curve(logits, labels, exits, policy, temps, num_layers, points: int = 7):
    """(mean layers, dev accuracy) at evenly spread settings of one policy."""
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


if __name__ == "__main__":
    main()
