"""The demo's MoEfication row: Super's FFNs split into experts, a trained router per layer.

Shape vocabulary: n examples, v valid rows of a batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from jaxtyping import Bool

from elang_jax import data, flops, moe, training
from elang_jax.calibration import calibrate
from elang_jax.demo._config import DemoConfig
from elang_jax.demo._method import (
    Calibration,
    Method,
    RowStats,
    dataset_outputs,
    head_flops,
    make_batches,
    padded_length,
    summarize,
)
from elang_jax.demo._models import load_params, save_params
from elang_jax.models import BertForSequenceClassification, FeedForward
from elang_jax.timing import logits_fn


def moe_classifier_flops(cfg, tokens: int, num_experts: int, top_k: int) -> int:
    """A MoEfied BERT-family classifier on one sequence: dense attention, MoE FFNs with
    MoEfication's MLP router, the pooler and the classifier."""
    d = cfg.hidden_size
    layer = flops.attention_flops(tokens, tokens, d, d) + flops.moe_ffn_flops(
        tokens, d, cfg.intermediate_size, num_experts, top_k
    )
    return cfg.num_layers * layer + head_flops(cfg)


def _moefied(
    super_: BertForSequenceClassification,
    fit: data.Encoded,
    config: DemoConfig,
    cache: Path,
    finetune: training.FinetuneConfig,
    progress: Callable[[str], None],
) -> nnx.Module:
    base = moe.MoEConfig(
        num_experts=config.moe.experts,
        top_k=min(config.moe.top_k),
        impl=moe.MoEImpl(config.moe.impl),
        router=moe.RouterKind.MLP,
    )
    if cache.is_file():
        # The structure alone (contiguous experts) is cheap; the cached parameters fill it.
        model = nnx.clone(super_)
        for site in moe.ffn_sites(model):
            dense = site.ffn
            assert isinstance(dense, FeedForward)  # a clone of the dense Super
            site.ffn = moe.MoEFeedForward.from_dense(dense, base)
        if load_params(_cached_part(model, config), cache):
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
    steps = config.moe.calibration_steps
    if steps:
        progress(f"parameter calibration ({steps} steps, routers frozen)")
        ft = finetune.replace(learning_rate=config.moe.calibration_lr, warmup_ratio=0.1)
        buckets = data.LengthBuckets(config.finetune.buckets)
        batches = []
        for epoch in itertools.count():
            batches += data.iterate_batches(
                fit, ft.batch_size, buckets, shuffle=True, seed=config.seed, epoch=epoch
            )
            if len(batches) >= steps:
                break
        moe.calibrate_moefied(model, batches[:steps], steps, ft, seed=config.seed)
    save_params(_cached_part(model, config), cache)
    return model


def _cached_part(model: nnx.Module, config: DemoConfig) -> nnx.Module:
    """What the cache file holds: the MoE FFNs, or the whole model once calibration has
    fine-tuned every parameter but the routers."""
    return model if config.moe.calibration_steps else _MoEFFNs(model)


class _MoEFFNs(nnx.Module):
    """The MoE FFNs of a MoEfied model (what its cache file holds)."""

    def __init__(self, model: nnx.Module):
        self.ffns = nnx.List([site.ffn for site in moe.ffn_sites(model)])


def moefied(
    super_: BertForSequenceClassification,
    fit: data.Encoded,
    calib: Calibration,
    config: DemoConfig,
    cache: Path,
    finetune: training.FinetuneConfig,
    progress: Callable[[str], None] = lambda _: None,
    known: dict[str, Any] | None = None,
) -> Method:
    """Super MoEfied: every FFN split into `moe.experts` experts by balanced k-means on its
    neurons, an MLP router per layer trained on FFN inputs of `fit`, then (with
    `moe.calibration_steps`) every parameter but the routers fine-tuned on `fit` under
    Super's fine-tuning settings (`finetune`); run with `moe.impl`. The number of active
    experts is the cheapest of `moe.active` meeting the target (one value: fixed). Its
    `diagnose` reports each layer's expert load."""
    model = _moefied(super_, fit, config, cache, finetune, progress)
    cfg = super_.config
    e = config.moe.experts
    sites = moe.ffn_sites(model)

    def with_top_k(k: int):
        for site in sites:
            ffn = site.ffn
            assert isinstance(ffn, moe.MoEFeedForward)  # the model is MoEfied
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
        known = summarize(op, setting, config.calibration.epsilon)
    # The implementation changes the timing only: a cached outcome is reused under any.
    known = {**known, "setting": {**known["setting"], "impl": config.moe.impl}}
    k = int(known["setting"]["active"])
    fn = with_top_k(k)

    def diagnose(batches):
        loads = moe.expert_load(model, batches)
        return moe.format_expert_load(loads), [load.to_json() for load in loads]

    def decode(batch, logits):
        v = batch.valid
        m = int(v.sum())
        return RowStats(
            predictions=np.asarray(logits).argmax(-1)[v],
            flops=np.full(m, float(moe_classifier_flops(cfg, padded_length(batch), e, k))),
            skipped={"experts": np.full(m, 1.0 - k / e)},
        )

    return Method(
        name=f"MoEfied Super ({k}/{e} experts)",
        kind="moe",
        forward=fn,
        decode=decode,
        calibration=known,
        diagnose=diagnose,
    )
