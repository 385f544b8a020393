"""The demo's methods, each calibrated on the calibration split and run batched under jit.

A `Method` is a compiled batched forward (`forward`, the part that is timed) and a host-side
`decode` that turns its output into per-example predictions, analytic FLOPs at the batch's
padded length, and the share of work skipped. Every method is calibrated for the same
target: accuracy at most `DemoConfig.calibration.epsilon` below Super's on the calibration
split, with the library's `elang_jax.calibration.calibrate` (through each method's own
wrapper).

Shape vocabulary: b batch rows, t padded length, c classes, v valid rows of a batch,
n examples, e exits.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from jaxtyping import Bool, Float, Int

from elang_jax import compose, data, exits, flops, moe, pruning
from elang_jax.calibration import CalibrationTarget, OperatingPoint, calibrate
from elang_jax.cascade import Cascade, Tier, TierConfig, calibrate_two_tier
from elang_jax.demo._config import DemoConfig
from elang_jax.demo._models import load_params, save_params
from elang_jax.models import BertForSequenceClassification
from elang_jax.routing import Score
from elang_jax.timing import batch_inputs, logits_fn


@dataclasses.dataclass(frozen=True)
class RowStats:
    """What one batch's valid rows got.

    Attributes:
      predictions: [v] predicted labels.
      flops: [v] analytic FLOPs spent on each example at the batch's padded length.
      skipped: name ("inputs", "layers", "tokens", "experts") -> [v] share of that unit of
        work skipped for each example.
    """

    predictions: Int[np.ndarray, " v"]
    flops: Float[np.ndarray, " v"]
    skipped: dict[str, Float[np.ndarray, " v"]]


@dataclasses.dataclass
class Method:
    """A calibrated method, ready to run.

    Attributes:
      name: row label.
      kind: "reference", "cascade", "exits", "pruning", "moe" or "composed".
      forward: jitted `forward(batch)` on a padded batch of `eval.batch_size` rows.
      decode: `decode(batch, forward(batch)) -> RowStats` (host side, not timed).
      calibration: what calibration chose and scored on the calibration split (setting,
        accuracy, reference_accuracy, cost, target_met); empty for the reference rows. A
        builder given this dict as `known` skips calibrating and rebuilds from `setting`.
    """

    name: str
    kind: str
    forward: Callable[[data.Batch], Any]
    decode: Callable[[data.Batch, Any], RowStats]
    calibration: dict[str, Any] = dataclasses.field(default_factory=dict)


class Calibration:
    """The calibration split as every method sees it, computed on first use: a run whose
    calibration outcomes are all cached (see `Method.calibration`) never runs it.

    Attributes:
      encoded: the calibration examples.
      labels: [n] their labels.
      target: the calibration target.
      batches: their padded batches (sorted by length, every example once).
      super_logits: [n c] Super's logits on them (the reference of every method).
      swift_logits: [n c] Swift's.
    """

    def __init__(
        self,
        encoded: data.Encoded,
        config: DemoConfig,
        super_fn: Callable[[data.Batch], Any],
        swift_fn: Callable[[data.Batch], Any],
    ):
        assert encoded.labels is not None
        self.encoded = encoded
        self.labels: Int[np.ndarray, " n"] = encoded.labels
        self.target = CalibrationTarget(epsilon=config.calibration.epsilon)
        self._config = config
        self._fns = {"super": super_fn, "swift": swift_fn}

    @functools.cached_property
    def batches(self) -> list[data.Batch]:
        return make_batches(self.encoded, self._config)

    @functools.cached_property
    def super_logits(self) -> Float[np.ndarray, "n c"]:
        return dataset_outputs(self._fns["super"], self.batches, len(self.encoded))

    @functools.cached_property
    def swift_logits(self) -> Float[np.ndarray, "n c"]:
        return dataset_outputs(self._fns["swift"], self.batches, len(self.encoded))


def make_batches(encoded: data.Encoded, config: DemoConfig) -> list[data.Batch]:
    """Padded evaluation batches, sorted by length (every method runs these)."""
    buckets = data.LengthBuckets(config.eval.buckets)
    return list(
        data.iterate_batches(
            encoded, config.eval.batch_size, buckets, shuffle=False, sort_by_length=True
        )
    )


def dataset_outputs(
    fn: Callable[[data.Batch], Any], batches: Sequence[data.Batch], n: int
) -> Float[np.ndarray, "n c"]:
    """`fn`'s [b c] outputs over batches, valid rows only, back in dataset order."""
    idx, vals = [], []
    for b in batches:
        idx.append(b.index[b.valid])
        vals.append(np.asarray(fn(b))[b.valid])
    return data.restore_order(idx, vals, n)


def _summary(op: OperatingPoint, setting: Any, epsilon: float) -> dict[str, Any]:
    return dict(
        setting=setting,
        accuracy=op.accuracy,
        reference_accuracy=op.reference_accuracy,
        cost=op.cost,
        target_met=bool(op.accuracy >= op.reference_accuracy - epsilon - 1e-12),
    )


def _lengths(batch: data.Batch) -> int:
    return int(batch.input_ids.shape[1])


def _head_flops(cfg) -> int:
    return pruning.classifier_head_flops(cfg)


# ----------------------------------------------------------------------------------------------
# Reference rows


def reference(name: str, model: BertForSequenceClassification, fn=None) -> Method:
    """A model alone (Super or Swift): every example runs the whole model."""
    fn = fn or logits_fn(model)
    cfg = model.config

    def decode(batch, logits):
        v = batch.valid
        n = int(v.sum())
        return RowStats(
            predictions=np.asarray(logits).argmax(-1)[v],
            flops=np.full(n, float(flops.classifier_flops(cfg, _lengths(batch)))),
            skipped={},
        )

    return Method(name=name, kind="reference", forward=fn, decode=decode)


# ----------------------------------------------------------------------------------------------
# Cascades


def cascade(
    name: str,
    score: str,
    swift: BertForSequenceClassification,
    super_: BertForSequenceClassification,
    calib: Calibration,
    config: DemoConfig,
    known: dict[str, Any] | None = None,
) -> Method:
    """A Swift -> Super cascade on Swift's `score` (E-LANG: "energy"; TangoBERT:
    "max_prob"), its threshold calibrated on Swift's and Super's calibration logits."""
    if known is None:
        lengths = calib.encoded.lengths
        ratio = np.array(
            [
                flops.classifier_flops(swift.config, int(t))
                / flops.classifier_flops(super_.config, int(t))
                for t in lengths
            ]
        )
        op = calibrate_two_tier(
            calib.swift_logits,
            calib.super_logits,
            calib.labels,
            score,
            calib.target,
            swift_cost=ratio,
        )
        threshold = float(op.setting[0])
        known = _summary(op, {"score": score, "threshold": threshold}, config.calibration.epsilon)
    threshold = float(known["setting"]["threshold"])
    n = config.cascade.buckets
    built = Cascade(
        [
            Tier(swift, TierConfig(name="swift", score=Score(score), threshold=threshold)),
            Tier(super_, TierConfig(name="super")),
        ],
        bucket_fractions=tuple(i / n for i in range(n + 1)),
    )
    step = built.serving_step(config.eval.batch_size)

    def forward(batch):
        return step(batch_inputs(batch), valid=batch.valid)

    def decode(batch, out):
        v = batch.valid
        t = _lengths(batch)
        tier = np.asarray(out.tier)[v]
        cost = flops.classifier_flops(swift.config, t) + (tier == 1) * float(
            flops.classifier_flops(super_.config, t)
        )
        return RowStats(
            predictions=np.asarray(out.predictions)[v],
            flops=np.asarray(cost, float),
            skipped={"inputs": (tier == 0).astype(float)},
        )

    return Method(
        name=name,
        kind="cascade",
        forward=forward,
        decode=decode,
        calibration=known,
    )


# ----------------------------------------------------------------------------------------------
# Multi-exit


def exit_model(
    super_: BertForSequenceClassification,
    fit: data.Encoded,
    config: DemoConfig,
    cache: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> exits.MultiExit:
    """Super with an exit head after every layer, the heads trained on the frozen
    backbone's features of `fit` (DeeBERT's second stage) or loaded from `cache`."""
    n = config.exits.exit_buckets
    me = exits.MultiExit(
        super_,
        exits.MultiExitConfig(
            pooling=config.exits.exit_pooling, bucket_fractions=tuple(i / n for i in range(n + 1))
        ),
        rngs=nnx.Rngs(config.seed),
    )
    if not load_params(_ExitHeads(me), cache):
        buckets = data.LengthBuckets(config.eval.buckets)
        progress("collecting frozen features")
        feats, _ = exits.collect_features(me, fit, config.eval.batch_size, buckets)
        progress("training exit heads")
        assert fit.labels is not None
        exits.train_exit_heads(
            me,
            feats,
            fit.labels,
            exits.ExitTrainConfig(epochs=config.exits.epochs, seed=config.seed),
        )
        save_params(_ExitHeads(me), cache)
    return me


def multi_exit(
    me: exits.MultiExit,
    calib: Calibration,
    config: DemoConfig,
    progress: Callable[[str], None] = lambda _: None,
    known: dict[str, Any] | None = None,
) -> Method:
    """Super exiting early (`exit_model`), the entropy policy's threshold calibrated on
    the calibration split."""
    super_ = me.model
    buckets = data.LengthBuckets(config.eval.buckets)
    num_layers = super_.config.num_layers
    if known is None:
        progress("calibrating the exit threshold")
        lg_cal = exits.dataset_exit_logits(me, calib.encoded, config.eval.batch_size, buckets)
        op = exits.calibrate_exits(
            lg_cal, calib.labels, me.exit_layers, "entropy", calib.target, None, num_layers
        )
        setting = {"policy": "entropy", "threshold": float(op.setting)}
        known = _summary(op, setting, config.calibration.epsilon)
    threshold = float(known["setting"]["threshold"])
    layers_at = np.asarray(me.exit_layers)
    step = me.exit_step(config.eval.batch_size, "entropy")
    cfg = super_.config
    last = me.num_exits - 1

    def forward(batch):
        return step(batch_inputs(batch), valid=batch.valid, threshold=threshold)

    def decode(batch, out):
        v = batch.valid
        t = _lengths(batch)
        k = np.asarray(out.exit_index)[v]
        layers = layers_at[k]
        # Layers run, plus one head (pooler + classifier) per exit the example passed.
        cost = layers * float(flops.encoder_layer_flops(cfg, t)) + (k + 1) * float(_head_flops(cfg))
        return RowStats(
            predictions=np.asarray(out.predictions)[v],
            flops=cost,
            skipped={"inputs": (k < last).astype(float), "layers": 1.0 - layers / num_layers},
        )

    return Method(
        name="Multi-exit (entropy)",
        kind="exits",
        forward=forward,
        decode=decode,
        calibration=known,
    )


class _ExitHeads(nnx.Module):
    """The trainable part of a MultiExit (what its cache file holds)."""

    def __init__(self, me: exits.MultiExit):
        self.heads = me.heads
        self.mix = me.mix


# ----------------------------------------------------------------------------------------------
# ACC token pruning


def token_pruning(
    super_: BertForSequenceClassification,
    calib: Calibration,
    config: DemoConfig,
    progress: Callable[[int], Any] | None = None,
    known: dict[str, Any] | None = None,
) -> Method:
    """Super with ACC token pruning, zero-shot (no fine-tuning with elimination): the keep
    schedule is the cheapest of `config.pruning.acc_targets`' candidates meeting the target."""
    acc = pruning.AccConfig.bert(variant=config.pruning.acc_variant)
    if known is None:
        schedule, op = pruning.calibrate_schedule(
            super_,
            calib.batches,
            calib.labels,
            config.pruning.acc_targets,
            acc,
            calib.target,
            reference_predictions=calib.super_logits.argmax(-1),
            progress=progress,
        )
        known = _summary(
            op, {"variant": acc.variant.value, "rate": schedule.rate}, config.calibration.epsilon
        )
    schedule = pruning.KeepSchedule.from_speed(
        known["setting"]["rate"], super_.config.num_layers, acc
    )
    graphdef, state = nnx.split(super_)
    static = schedule if schedule.prunes else None
    cfg = super_.config
    dims = pruning.LayerDims.of(cfg)
    head = _head_flops(cfg)

    def forward(batch):
        return pruning.acc_logits(graphdef, state, static, batch_inputs(batch))

    def decode(batch, logits):
        v = batch.valid
        t = _lengths(batch)
        counts = schedule.counts(t)
        m = int(v.sum())
        return RowStats(
            predictions=np.asarray(logits).argmax(-1)[v],
            flops=np.full(m, float(pruning.stack_flops(dims, counts) + head)),
            skipped={"tokens": np.full(m, 1.0 - sum(counts) / (len(counts) * t))},
        )

    return Method(
        name=f"ACC token pruning ({acc.variant.value})",
        kind="pruning",
        forward=forward,
        decode=decode,
        calibration=known,
    )


# ----------------------------------------------------------------------------------------------
# MoEfication


def moe_classifier_flops(cfg, tokens: int, num_experts: int, top_k: int) -> int:
    """A MoEfied BERT-family classifier on one sequence: dense attention, MoE FFNs with
    MoEfication's MLP router, the pooler and the classifier."""
    d = cfg.hidden_size
    layer = flops.attention_flops(tokens, tokens, d, d) + flops.moe_ffn_flops(
        tokens, d, cfg.intermediate_size, num_experts, top_k
    )
    return cfg.num_layers * layer + _head_flops(cfg)


def _moefied(
    super_: BertForSequenceClassification,
    fit: data.Encoded,
    config: DemoConfig,
    cache: Path,
    progress: Callable[[str], None],
) -> nnx.Module:
    base = moe.MoEConfig(
        num_experts=config.moe.experts,
        top_k=min(config.moe.top_k),
        impl=moe.MoEImpl.CAPACITY,
        router=moe.RouterKind.MLP,
    )
    if cache.is_file():
        # The structure alone (contiguous experts) is cheap; the cached parameters fill it.
        model = nnx.clone(super_)
        for site in moe.ffn_sites(model):
            dense = site.ffn  # pyright: ignore[reportAttributeAccessIssue]
            site.ffn = moe.MoEFeedForward.from_dense(dense, base)  # pyright: ignore[reportAttributeAccessIssue]
        if load_params(_MoEFFNs(model), cache):
            return model
    progress("collecting FFN inputs")
    batches = make_batches(fit, config)
    inputs = moe.collect_ffn_inputs(
        super_, batches, max_tokens=config.moe.max_tokens, seed=config.seed
    )
    progress("splitting experts (k-means), training routers")
    model, _ = moe.moefy(
        super_,
        base,
        method=moe.SplitMethod.KMEANS,
        ffn_inputs=inputs,
        router_training=moe.RouterTrainConfig(
            epochs=config.moe.router_epochs,
            # At most the tokens left after the router's validation share: a larger batch
            # than the data fails in train_mlp_router.
            batch_size=max(1, min(512, len(inputs[0]) - max(1, len(inputs[0]) // 10))),
            seed=config.seed,
        ),
        seed=config.seed,
        copy=True,
    )
    save_params(_MoEFFNs(model), cache)
    return model


class _MoEFFNs(nnx.Module):
    """The MoE FFNs of a MoEfied model (what its cache file holds)."""

    def __init__(self, model: nnx.Module):
        self.ffns = nnx.List([site.ffn for site in moe.ffn_sites(model)])  # pyright: ignore[reportAttributeAccessIssue]


def moefied(
    super_: BertForSequenceClassification,
    fit: data.Encoded,
    calib: Calibration,
    config: DemoConfig,
    cache: Path,
    progress: Callable[[str], None] = lambda _: None,
    known: dict[str, Any] | None = None,
) -> Method:
    """Super MoEfied: every FFN split into `moe.experts` experts by balanced k-means on its
    neurons, an MLP router per layer trained on FFN inputs of `fit`, run with the CAPACITY
    implementation; the number of active experts is the cheapest of `moe.active` meeting
    the target (one value: fixed)."""
    model = _moefied(super_, fit, config, cache, progress)
    cfg = super_.config
    e = config.moe.experts
    sites = moe.ffn_sites(model)

    def with_top_k(k: int):
        for site in sites:
            ffn = site.ffn  # pyright: ignore[reportAttributeAccessIssue]
            ffn.config = ffn.config.replace(top_k=k)
        return logits_fn(model)  # the top-k is static: a new graph, a new program

    if known is None:
        progress("calibrating the active experts")
        lengths = calib.encoded.lengths
        correct, cost = [], []
        for k in config.moe.top_k:
            preds = dataset_outputs(with_top_k(k), calib.batches, len(lengths)).argmax(-1)
            correct.append(preds == calib.labels)
            cost.append(
                np.mean(
                    [
                        moe_classifier_flops(cfg, int(t), e, k)
                        / flops.classifier_flops(cfg, int(t))
                        for t in lengths
                    ]
                )
            )
        reference_correct: Bool[np.ndarray, " n"] = calib.super_logits.argmax(-1) == calib.labels
        op = calibrate(
            np.stack(correct), np.asarray(cost), reference_correct, calib.target, config.moe.top_k
        )
        setting = {"experts": e, "active": int(op.setting), "split": "kmeans", "router": "mlp"}
        known = _summary(op, {**setting, "impl": "capacity"}, config.calibration.epsilon)
    k = int(known["setting"]["active"])
    fn = with_top_k(k)

    def decode(batch, logits):
        v = batch.valid
        m = int(v.sum())
        return RowStats(
            predictions=np.asarray(logits).argmax(-1)[v],
            flops=np.full(m, float(moe_classifier_flops(cfg, _lengths(batch), e, k))),
            skipped={"experts": np.full(m, 1.0 - k / e)},
        )

    return Method(
        name=f"MoEfied Super ({k}/{e} experts)",
        kind="moe",
        forward=fn,
        decode=decode,
        calibration=known,
    )


# ----------------------------------------------------------------------------------------------
# Composition


def composed_exits_acc(
    me: exits.MultiExit,
    calib: Calibration,
    config: DemoConfig,
    progress: Callable[[str], None] = lambda _: None,
    known: dict[str, Any] | None = None,
    tick: Callable[[int], Any] | None = None,
) -> Method:
    """Super exiting early and pruning tokens at once (`elang_jax.compose`): the exit
    threshold and the keep schedule calibrated jointly. Each candidate schedule (one per
    `compose.acc_targets`, as ACC's) costs one pass over the calibration split with every
    exit's logits (`tick` is called with 1 after each batch); the thresholds are then
    replayed offline."""
    super_ = me.model
    cfg = super_.config
    n = config.exits.exit_buckets
    fractions = tuple(i / n for i in range(n + 1))
    acc = pruning.AccConfig.bert(variant=config.pruning.acc_variant)

    def system(rate: float, threshold: float = np.inf) -> compose.ComposedClassifier:
        tier = compose.ComposedTierConfig(
            name="super",
            exit_policy=exits.ExitPolicy.ENTROPY,
            exit_threshold=threshold,
            acc_rate=rate,
            acc=acc,
        )
        return compose.ComposedClassifier(
            [me], compose.ComposedConfig(tiers=(tier,), exit_bucket_fractions=fractions)
        )

    if known is None:
        dims = pruning.LayerDims.of(cfg)
        schedules = pruning.schedule_candidates(
            config.compose.acc_targets,
            dims,
            pruning.batch_workload(calib.batches),
            acc,
            fixed_flops=_head_flops(cfg),
        )
        # The unpruned schedule is the multi-exit row's; keep it only if nothing else fits.
        schedules = schedules[1:] or schedules
        grids = []
        for s in schedules:
            progress(f"keep schedule {s.rate:.3f}: every exit on the calibration split")
            sys_ = system(s.rate)
            outcome = compose.tier_outcomes(sys_, 0, calib.batches, len(calib.labels), tick)
            grids.append(compose.candidate_grid(sys_, [outcome], num=config.compose.grid))
        lengths = outcome.lengths
        reference_flops = float(sum(flops.classifier_flops(cfg, int(t)) for t in lengths))
        chosen = compose.calibrate_composed(
            grids,
            calib.labels,
            calib.super_logits.argmax(-1) == calib.labels,
            reference_flops,
            calib.target,
        )
        tier = chosen.config.tiers[0]
        setting = {
            "policy": "entropy",
            "threshold": float(tier.exit_threshold),
            "variant": acc.variant.value,
            "rate": float(tier.acc_rate or 1.0),
        }
        known = _summary(chosen.point, setting, config.calibration.epsilon)
    setting = known["setting"]
    built = system(float(setting["rate"]), float(setting["threshold"]))
    step = built.serving_step(config.eval.batch_size)
    schedule = pruning.KeepSchedule.from_speed(float(setting["rate"]), cfg.num_layers, acc)
    num_layers = cfg.num_layers
    last = me.num_exits - 1

    def forward(batch):
        return step(batch_inputs(batch), valid=batch.valid)

    def decode(batch, out):
        v = batch.valid
        t = _lengths(batch)
        layers = np.asarray(out.layers)[v, 0]
        kept = np.cumsum((0, *schedule.counts(t)))  # token-layer slots of the first l layers
        return RowStats(
            predictions=np.asarray(out.predictions)[v],
            flops=built.example_flops(out, t)[v],
            skipped={
                "inputs": (np.asarray(out.exit_index)[v, 0] < last).astype(float),
                "layers": 1.0 - layers / num_layers,
                "tokens": 1.0 - kept[layers] / (np.maximum(layers, 1) * t),
            },
        )

    return Method(
        name="Composed: exits + ACC",
        kind="composed",
        forward=forward,
        decode=decode,
        calibration=known,
    )


# ----------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One method over one dataset.

    Attributes:
      predictions: [n] in dataset order.
      flops: total analytic FLOPs over the dataset's examples.
      skipped: name -> mean share of that unit of work skipped.
    """

    predictions: Int[np.ndarray, " n"]
    flops: float
    skipped: dict[str, float]


def evaluate(
    method: Method,
    batches: Sequence[data.Batch],
    n: int,
    progress: Callable[[int], Any] | None = None,
) -> Evaluation:
    """Runs `method` over padded batches holding n examples (the first pass also compiles)."""
    idx, preds, cost = [], [], 0.0
    skipped: dict[str, list[np.ndarray]] = {}
    for b in batches:
        stats = method.decode(b, method.forward(b))
        idx.append(b.index[b.valid])
        preds.append(stats.predictions)
        cost += float(np.sum(stats.flops))
        for k, x in stats.skipped.items():
            skipped.setdefault(k, []).append(np.asarray(x, float))
        if progress is not None:
            progress(1)
    return Evaluation(
        predictions=data.restore_order(idx, preds, n),
        flops=cost,
        skipped={k: float(np.concatenate(v).mean()) for k, v in skipped.items()},
    )
