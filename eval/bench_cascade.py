"""Swift/Super cascades on a GLUE task: accuracy, share sent to Super, FLOP and measured speed-up.

    python eval/bench_cascade.py --super runs/super/final --swift runs/swift/final \
        [--swift-dar runs/swift_dar/final] --json runs/cascade.json

Thresholds are chosen on a held-out part of the training split (`--holdout`, `--holdout-seed`
and `--holdout-kind`: the same split the models were fine-tuned without; the defaults are the
sst2_minilm preset's 1,500 whole sentences), and every number is
reported on the dev split. The compiled cascade step and the Super model alone run on the
same padded batches of `--batch-size` in one process, so the measured ratio compares like
with like. The FLOP speed-up is the analytic ideal: Super FLOPs over Swift FLOPs plus the
escalated examples' Super FLOPs, at the padded batch length, without bucket rounding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from elang_jax import CalibrationTarget, Cascade, Tier, TierConfig, from_pretrained, score
from elang_jax import data as D
from elang_jax.cascade import calibrate_two_tier, dataset_logits
from elang_jax.flops import classifier_flops
from elang_jax.timing import batch_inputs, logits_fn, time_total

METHODS = (
    # (name, swift key, score, note)
    ("E-LANG energy", "swift", "energy", "-F = T logsumexp(z/T), T=1"),
    ("E-LANG released code", "swift", "softmax_lse", "logsumexp of probabilities"),
    ("TangoBERT max-prob", "swift", "max_prob", ""),
    ("CascadeBERT (no DAR)", "swift", "max_prob", "complete-model cascade, CE only"),
    ("CascadeBERT (DAR)", "swift_dar", "max_prob", "Swift trained with CE + DAR"),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--super", required=True, dest="super_dir")
    p.add_argument("--swift", required=True)
    p.add_argument("--swift-dar", default=None)
    p.add_argument("--holdout", type=int, default=1500)
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--holdout-kind", choices=["random", "sentences"], default="sentences")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--objective", choices=["accuracy", "guarantee"], default="accuracy")
    p.add_argument("--epsilon", type=float, default=0.0, help="accuracy drop allowed on calib")
    p.add_argument("--delta", type=float, default=0.1, help="failure probability (guarantee)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    models = {"super": from_pretrained(args.super_dir), "swift": from_pretrained(args.swift)}
    if args.swift_dar:
        models["swift_dar"] = from_pretrained(args.swift_dar)
    tokenizer = D.load_tokenizer(args.super_dir)
    buckets = D.LengthBuckets(lengths=(16, 32, 64, 128))
    train = D.read_glue(args.task, "train")
    _, held = D.calibration_split(train, args.holdout, args.holdout_seed, args.holdout_kind)
    calib = D.encode_glue(tokenizer, D.select_examples(train, held), 128)
    dev = D.encode_glue(tokenizer, D.read_glue(args.task, "dev"), 128)

    cfg = {k: m.config for k, m in models.items()}
    logits = {
        k: {
            "calib": dataset_logits(m, calib, 64, buckets),
            "dev": dataset_logits(m, dev, 64, buckets),
        }
        for k, m in models.items()
    }
    y_cal, y_dev = calib.labels, dev.labels

    def acc(lg, y):
        return float((lg.argmax(-1) == y).mean())

    dev_batches = list(
        D.iterate_batches(dev, args.batch_size, buckets, shuffle=False, sort_by_length=True)
    )
    super_fwd = logits_fn(models["super"])
    super_time = time_total(super_fwd, dev_batches, args.repeats)
    super_flops = sum(
        b.num_valid * classifier_flops(cfg["super"], b.input_ids.shape[1]) for b in dev_batches
    )
    rows = [
        dict(
            method="Super alone",
            accuracy=acc(logits["super"]["dev"], y_dev),
            to_super=1.0,
            flop_speedup=1.0,
            measured_speedup=1.0,
            super_ms=1e3 * super_time,
        ),
    ]
    for key in [k for k in models if k != "super"]:
        swift_time = time_total(logits_fn(models[key]), dev_batches, args.repeats)
        fl = sum(
            b.num_valid * classifier_flops(cfg[key], b.input_ids.shape[1]) for b in dev_batches
        )
        rows.append(
            dict(
                method=f"{key} alone",
                accuracy=acc(logits[key]["dev"], y_dev),
                to_super=0.0,
                flop_speedup=super_flops / fl,
                measured_speedup=super_time / swift_time,
            )
        )

    lengths_cal = calib.lengths
    for name, key, kind, note in METHODS:
        if key not in models:
            continue
        sup_f = np.array([classifier_flops(cfg["super"], int(n)) for n in lengths_cal], float)
        sw_f = np.array([classifier_flops(cfg[key], int(n)) for n in lengths_cal], float)
        op = calibrate_two_tier(
            logits[key]["calib"],
            logits["super"]["calib"],
            y_cal,
            kind,
            CalibrationTarget(objective=args.objective, epsilon=args.epsilon, delta=args.delta),
            swift_cost=sw_f / sup_f,
        )
        threshold = float(op.setting[0])
        cascade = Cascade(
            [
                Tier(models[key], TierConfig(name=key, score=kind, threshold=threshold)),
                Tier(models["super"], TierConfig(name="super")),
            ],
            bucket_fractions=tuple(i / 16 for i in range(17)),
        )
        step = cascade.serving_step(args.batch_size)

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
        agree = float((offline == tier).mean())
        cascade_time = time_total(run, dev_batches, args.repeats)
        flop_speedup = super_flops / flops
        measured = super_time / cascade_time
        rows.append(
            dict(
                method=name,
                accuracy=float((pred == y_dev).mean()),
                to_super=float(tier.mean()),
                flop_speedup=flop_speedup,
                measured_speedup=measured,
                measured_over_flop=measured / flop_speedup,
                threshold=threshold,
                calib_accuracy=op.accuracy,
                calib_super_accuracy=op.reference_accuracy,
                offline_agreement=agree,
                note=note,
            )
        )

    target = f"{args.objective} epsilon {args.epsilon}"
    if args.objective == "guarantee":
        target += f" delta {args.delta}"
    print(
        f"task {args.task}, dev {len(dev)} examples, calibration = {args.holdout} held-out "
        f"train examples ({args.holdout_kind}), target {target}, batch {args.batch_size}, "
        f"device {jax.devices()[0]}"
    )
    print(f"{'method':<24} {'acc':>6} {'->Super':>8} {'FLOP x':>7} {'meas. x':>8} {'meas/FLOP':>9}")
    for r in rows:
        ratio = r.get("measured_over_flop")
        print(
            f"{r['method']:<24} {100 * r['accuracy']:6.2f} {100 * r['to_super']:7.1f}% "
            f"{r['flop_speedup']:7.2f} {r['measured_speedup']:8.2f} "
            f"{'' if ratio is None else f'{ratio:9.2f}'}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(args=vars(args), rows=rows), indent=2))


if __name__ == "__main__":
    main()
