"""E-LANG where it was made to work (eval/pair.py): a 12-layer MPNet-base Super behind a
MiniLM-L6 Swift, each with its own tokenizer.

The models are fine-tuned on the task's training split without the demo's calibration
holdout (for SST-2: 1,500 whole training sentences, their phrases removed from training), or
loaded from `<elang_jax cache>/pair/<task>/` (`_pair_finetune`, `_pair_models`). The plain
Swift recipe is the demo's (its Super: all six MiniLM layers), so a demo run's fine-tuned
Super can be adopted as that Swift; a distilled Swift learns from Super's soft labels as
well. The thresholds of every method (`_pair_methods`: E-LANG energy and released-code
score, TangoBERT max-prob, CascadeBERT without and with DAR; and the composed pair of
`_pair_composed`; each at the accuracy target and at the guarantee target) are
chosen on the calibration split, never on dev; dev only reports. The same checkpoints in
PyTorch, cascaded the peers' way (`_pair_peers`), are timed against the first method's
compiled step.

Every dev number comes from the compiled cascade step (`Cascade.serving_step`) run on
per-tier inputs: each batch holds the same examples tokenized by each tier's tokenizer,
padded to each tier's own length bucket. The step, Swift alone and Super alone run on the
same batches, and each is timed against Super's compiled forward, interleaved round by round
(`elang_jax.timing.time_against_reference`), in groups of rows whose compiled programs are
released before the next rows compile (`elang_jax.timing.GroupedTiming`): every row's step
for every length bucket does not fit one process's memory maps. The FLOP speed-up is the
analytic ideal: Super FLOPs over Swift FLOPs plus the escalated examples' Super FLOPs, each
model at its own padded batch length, without bucket rounding of the escalated rows.

Shape vocabulary: n examples, c classes, b batch rows, v valid rows of a batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import Bool, Int

from elang_jax import data as D
from elang_jax.benchmarks._pair_composed import composed_pair_rows
from elang_jax.benchmarks._pair_config import PairEvalConfig
from elang_jax.benchmarks._pair_finetune import finetune_pair
from elang_jax.benchmarks._pair_methods import SWIFT, PairMethod
from elang_jax.benchmarks._pair_models import Finetuned
from elang_jax.benchmarks._pair_peers import prediction_agreement, torch_peers
from elang_jax.benchmarks._pair_report import SUPER_ROW, SWIFT_ROW, goals
from elang_jax.cascade import (
    Cascade,
    Tier,
    TierConfig,
    calibrate_two_tier,
)
from elang_jax.core import bucket_sizes
from elang_jax.demo._method import even_fractions, fit_fractions
from elang_jax.engine import check_memory_maps
from elang_jax.flops import classifier_flops
from elang_jax.models import BertConfig
from elang_jax.routing import Score, score
from elang_jax.timing import GroupedTiming, batch_inputs, logits_fn, time_against_reference
from elang_jax.training._finetune import FINAL_DIR

log = logging.getLogger(__name__)

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
    """Fine-tunes (or loads) the models, calibrates every method of `config.methods` on
    the held-out split, runs their compiled cascade steps on dev (or `config.eval_file`),
    times every row against Super alone and the PyTorch peers against our step.

    Args:
      config: what to run.
      models: role -> fine-tuned model, if already at hand (else `finetune_pair(config)`).

    Returns:
      {"args": the config, "finetune": per role what `Finetuned.summary` says, "task",
      "dev_examples", "calib_examples", "device", "rows": one dict per method (Super alone,
      Swift alone, then the cascades) with accuracy, to_super, flop_speedup,
      measured_speedup, pass_ms, and for cascades the threshold, the calibration
      accuracies, target_met, measured_over_flop and the agreement of the compiled step
      with the offline rule on the same logits; "predictions": method -> [n] dev
      predictions; "dev_labels": [n]; "peers": PyTorch peer -> its time against our step
      and the agreement of its predictions; "goals": the issue's goals and whether they are
      met}.
    """
    models = dict(models) if models is not None else finetune_pair(config)
    cfg = {k: m.model.config for k, m in models.items()}
    train = D.read_glue(config.task, "train")
    trainable, held = D.calibration_split(
        train,
        config.calibration.holdout,
        config.calibration.holdout_seed,
        config.calibration.holdout_kind,
    )
    dev = D.read_glue(config.task, "dev", config.eval_file)
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
        SWIFT_ROW: lambda b: fns[SWIFT](b[SWIFT]),
    }
    logits: dict[str, dict[str, np.ndarray]] = {}
    for k, m in models.items():
        # Roles that share a model (the plain Swift is CascadeBERT's too) share its logits.
        same = next((j for j in logits if models[j].model is m.model), None)
        logits[k] = (
            logits[same]
            if same is not None
            else {
                "calib": _outputs(lambda b, k=k: fns[k](b[k]), calib_batches, len(y_cal)),
                "dev": _outputs(lambda b, k=k: fns[k](b[k]), dev_batches, len(y_dev)),
            }
        )
    super_flops = _flops(cfg["super"], dev_batches, "super")
    predictions = {
        SUPER_ROW: logits["super"]["dev"].argmax(-1),
        SWIFT_ROW: logits[SWIFT]["dev"].argmax(-1),
    }
    rows: list[dict[str, Any]] = [
        dict(method=SUPER_ROW, to_super=1.0, flop_speedup=1.0),
        dict(
            method=SWIFT_ROW,
            to_super=0.0,
            flop_speedup=super_flops / _flops(cfg[SWIFT], dev_batches, SWIFT),
        ),
    ]
    # Each row's step is timed against Super in a group of rows compiled before it, and
    # the group's programs released before more compile (`GroupedTiming`); the rows' steps
    # do not all fit one process at once. The first cascade's step is kept for the peers.
    timed = _timing_subset(dev_batches, config.timing_batches)
    timer = GroupedTiming(
        forwards[SUPER_ROW], timed, config.timing_rounds, max_share=config.timing_max_map_share
    )
    timer.add(SWIFT_ROW, forwards[SWIFT_ROW])
    timer.make_room()
    peer_reference: Callable[[Any], Any] | None = None
    for i, method in enumerate(config.methods):
        forward, row, predictions[method.name] = _cascade_row(
            config,
            method,
            models,
            logits,
            calib_enc,
            calib_batches,
            dev_batches,
            y_cal,
            super_flops,
        )
        rows.append(row)
        if peer_reference is None:
            peer_reference = forward
        timer.add(method.name, forward)
        del forward
        timer.make_room()
        log.info(
            "method %d/%d %s: threshold %.4f, %.1f%% sent to Super",
            i + 1,
            len(config.methods),
            method.name,
            row["threshold"],
            100 * row["to_super"],
        )
    if config.composed is not None:
        # A composed step is several times a cascade step's size (its calibration passes
        # too): time and free the cascade rows first, whatever room they seem to leave.
        timer.flush()
        # The exit heads learn from training examples, never calibration ones.
        rng = np.random.default_rng(config.seed)
        take = min(config.composed.exit_train_examples, len(trainable))
        fit = encode(D.select_examples(train, np.sort(rng.choice(trainable, take, replace=False))))
        composed_rows = composed_pair_rows(
            models=models,
            composed=config.composed,
            fit=fit,
            calib_batches=calib_batches,
            dev_batches=dev_batches,
            y_cal=y_cal,
            n_dev=len(y_dev),
            super_correct=logits["super"]["calib"].argmax(-1) == y_cal,
            targets={k: config.target_for(k) for k in config.targets},
            batch_size=config.batch_size,
            buckets=buckets,
            super_dev_flops=super_flops,
            seed=config.seed,
        )
        for forward, row, pred in composed_rows:
            predictions[row["method"]] = pred
            rows.append(row)
            timer.add(row["method"], forward)
            del forward
            timer.make_room()
            log.info(
                "%s: thresholds %.4f / %.4f / %.4f, keep rate %.3f, %.1f%% sent to Super",
                row["method"],
                row["threshold"],
                row["swift_exit_threshold"],
                row["super_exit_threshold"],
                row["acc_rate"],
                100 * row["to_super"],
            )
    for r in rows:
        r["accuracy"] = _accuracy(predictions[r["method"]], y_dev)

    timings = timer.results()
    maps = timer.peak_maps
    check_memory_maps(f"{len(rows)} rows timed in {len(timer.groups)} groups")
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
    peers = _time_peers(config, models, rows, peer_reference, predictions, dev_batches, timed)
    return dict(
        args=config,
        task=config.task,
        finetune={k: m.summary() for k, m in models.items()},
        dev_examples=len(y_dev),
        calib_examples=len(y_cal),
        timing_batches=len(timed),
        device=str(jax.devices()[0]),
        # [most held, limit] while the rows compiled (None off Linux): `GroupedTiming`.
        memory_maps=None if maps is None else list(maps),
        timing_groups=[list(g) for g in timer.groups],
        rows=rows,
        predictions=predictions,
        dev_labels=y_dev,
        peers=peers,
        goals=goals(rows),
    )


def _cascade_row(
    config: PairEvalConfig,
    method: PairMethod,
    models: Mapping[str, Finetuned],
    logits: Mapping[str, Mapping[str, np.ndarray]],
    calib_enc: Mapping[str, D.Encoded],
    calib_batches: Sequence[dict[str, D.Batch]],
    dev_batches: Sequence[dict[str, D.Batch]],
    y_cal: Int[np.ndarray, " n"],
    super_flops: float,
) -> tuple[Callable[[Any], Any], dict[str, Any], np.ndarray]:
    """One method: its threshold from the calibration split, its compiled step run over dev.

    Returns (the step as a function of a dict of per-tier batches, its row without accuracy
    and timing, its dev predictions).
    """
    role = method.swift
    cfg = {k: m.model.config for k, m in models.items()}
    ratio = _cost_ratio(
        cfg[role], cfg["super"], calib_enc[role].lengths, calib_enc["super"].lengths
    )
    target = config.target_for(method.target)
    op = calibrate_two_tier(
        logits[role]["calib"],
        logits["super"]["calib"],
        y_cal,
        method.score,
        target,
        swift_cost=ratio,
    )
    threshold = float(op.setting[0])
    fractions = _cascade_fractions(
        config, np.asarray(score(method.score, logits[role]["calib"])) < threshold, calib_batches
    )
    cascade = Cascade(
        [
            Tier(
                models[role].model,
                TierConfig(name="swift", score=Score(method.score), threshold=threshold),
            ),
            Tier(models["super"].model, TierConfig(name="super")),
        ],
        bucket_fractions=fractions,
    )
    step = cascade.serving_step(config.batch_size)

    def forward(b: dict[str, D.Batch]) -> Any:
        # Tier order: Swift's inputs, then Super's (same rows, own tokenization).
        return step([batch_inputs(b[role]), batch_inputs(b["super"])], valid=b["super"].valid)

    idx, preds, tiers = [], [], []
    flops = executed = _flops(cfg[role], dev_batches, role)
    sizes = bucket_sizes(config.batch_size, fractions)
    for b in dev_batches:  # compiles every batch shape once, before the timing
        out, v = forward(b), b["super"].valid
        idx.append(b["super"].index[v])
        preds.append(np.asarray(out.predictions)[v])
        tiers.append(np.asarray(out.tier)[v])
        per_row = _flops_at(cfg["super"], b["super"].input_ids.shape[1])
        escalated = int((tiers[-1] == 1).sum())
        flops += escalated * per_row
        # Super runs on the smallest bucket that holds the escalated rows.
        executed += sizes[int(np.searchsorted(sizes, escalated))] * per_row
    n_dev = len(logits["super"]["dev"])
    pred = D.restore_order(idx, preds, n_dev)
    tier = D.restore_order(idx, tiers, n_dev)
    # The compiled path must agree with the offline rule on the offline logits.
    offline = np.where(np.asarray(score(method.score, logits[role]["dev"])) >= threshold, 0, 1)
    eps = config.calibration.epsilon
    row = dict(
        method=method.name,
        score=method.score,
        swift=role,
        target=method.target,
        to_super=float(tier.mean()),
        flop_speedup=super_flops / flops,
        threshold=threshold,
        calib_accuracy=op.accuracy,
        calib_super_accuracy=op.reference_accuracy,
        target_met=bool(op.accuracy >= op.reference_accuracy - eps - 1e-12),
        upper_bound_drop=op.upper_bound_drop,
        offline_agreement=_accuracy(offline, tier),
        buckets=list(sizes),
        executed_flop_speedup=super_flops / executed,
    )
    return forward, row, pred


def _cascade_fractions(
    config: PairEvalConfig,
    escalated: Bool[np.ndarray, " n"],
    calib_batches: Sequence[dict[str, D.Batch]],
) -> tuple[float, ...]:
    """Bucket fractions of the escalated rows: fitted to where the calibration batches'
    counts fall, or even (`PairEvalConfig.fit_cascade_buckets`)."""
    n = config.cascade_buckets
    if not config.fit_cascade_buckets:
        return even_fractions(n)
    # A long batch's padding rows cost more Super FLOPs than a short one's: each batch
    # weighs its rows times its padded length.
    return fit_fractions(
        escalated, [b["super"] for b in calib_batches], config.batch_size, n, lambda t: [t]
    )


@functools.cache
def _flops_at(cfg: BertConfig, length: int) -> int:
    return classifier_flops(cfg, length)


def _cost_ratio(
    swift: BertConfig, super_: BertConfig, swift_lengths: np.ndarray, super_lengths: np.ndarray
) -> np.ndarray:
    """[n] Swift's cost relative to Super's on each example, each at its own length."""
    return np.array(
        [
            _flops_at(swift, int(a)) / _flops_at(super_, int(b))
            for a, b in zip(swift_lengths, super_lengths, strict=True)
        ]
    )


def _time_peers(
    config: PairEvalConfig,
    models: Mapping[str, Finetuned],
    rows: Sequence[Mapping[str, Any]],
    ours_forward: Callable[[Any], Any] | None,
    predictions: Mapping[str, np.ndarray],
    dev_batches: list[dict[str, D.Batch]],
    timed: list[Any],
) -> dict[str, dict[str, Any]]:
    """The PyTorch peers (`_pair_peers`) at the first method's routing, timed against its
    compiled step (`ours_forward`) on the same batches; {} when `config.peers` is off."""
    if not config.peers or ours_forward is None:
        return {}
    ours = next(r for r in rows if "threshold" in r)
    role = ours["swift"]
    peers = torch_peers(
        models[role].workdir / FINAL_DIR,
        models["super"].workdir / FINAL_DIR,
        role,
        ours["score"],
        ours["threshold"],
    )
    reference = predictions[ours["method"]]
    agreement = {k: prediction_agreement(f, dev_batches, reference) for k, f in peers.items()}
    timings = time_against_reference(
        ours_forward, peers, timed, config.timing_rounds, compiled=True
    )
    return {
        name: dict(
            routing_of=ours["method"],
            prediction_agreement=agreement[name],
            pass_ms=t.seconds * 1e3,
            ours_pass_ms=t.reference_seconds * 1e3,
            ours_speedup=1.0 / t.speedup,  # how many times faster our compiled step is
            ours_speedup_rounds=[1.0 / x for x in t.rounds],
        )
        for name, t in timings.items()
    }


def _timing_subset(batches: Sequence[Any], limit: int | None) -> list[Any]:
    # `limit` batches evenly spread over the length-sorted batches: every length represented.
    if limit is None or limit >= len(batches):
        return list(batches)
    picks = np.unique(np.linspace(0, len(batches) - 1, limit).round().astype(int))
    return [batches[i] for i in picks]
