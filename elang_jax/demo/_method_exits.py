"""The demo's multi-exit row: Super with an exit head after every layer (DeeBERT's heads),
exiting on the entropy policy.

Shape vocabulary: v valid rows of a batch, x exits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx
from jaxtyping import Float

from elang_jax import data, exits, flops
from elang_jax.demo._config import DemoConfig
from elang_jax.demo._method import (
    Calibration,
    Method,
    RowStats,
    even_fractions,
    fit_fractions,
    head_flops,
    padded_length,
    summarize,
)
from elang_jax.demo._models import load_params, save_params
from elang_jax.models import BertForSequenceClassification
from elang_jax.timing import batch_inputs


def exit_model(
    super_: BertForSequenceClassification,
    fit: data.Encoded,
    config: DemoConfig,
    cache: Path,
    progress: Callable[[str], None] = lambda _: None,
) -> exits.MultiExit:
    """Super with an exit head after every layer, the heads trained on the frozen
    backbone's features of `fit` (DeeBERT's second stage) or loaded from `cache`."""
    me = exits.MultiExit(
        super_,
        exits.MultiExitConfig(
            pooling=config.exits.exit_pooling,
            bucket_fractions=even_fractions(config.exits.exit_buckets),
        ),
        rngs=nnx.Rngs(config.seed),
    )
    if not load_params(exits.ExitHeads(me), cache):
        progress("training exit heads on frozen features")
        exits.train_frozen_exits(
            me,
            fit,
            exits.ExitTrainConfig(epochs=config.exits.epochs, seed=config.seed),
            config.eval.batch_size,
            data.LengthBuckets(config.eval.buckets),
        )
        save_params(exits.ExitHeads(me), cache)
    return me


def segment_flops(me: exits.MultiExit, t: int) -> Float[np.ndarray, " x"]:
    """[x] FLOPs of one row through each segment of `me` at padded length `t`: the layers
    since the previous exit, and the exit's head (pooler + classifier)."""
    cfg = me.model.config
    layers = np.diff((0, *me.exit_layers))
    return layers * float(flops.encoder_layer_flops(cfg, t)) + float(head_flops(cfg))


def multi_exit(
    me: exits.MultiExit,
    calib: Calibration,
    config: DemoConfig,
    progress: Callable[[str], None] = lambda _: None,
    known: dict[str, Any] | None = None,
) -> Method:
    """Super exiting early (`exit_model`), the entropy policy's threshold calibrated on
    the calibration split, the buckets of the rows still running fitted to where that
    threshold lets them leave there (`exits.fit_buckets`)."""
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
        known = summarize(op, setting, config.calibration.epsilon)
        fractions = me.config.bucket_fractions
        if config.exits.fit_buckets:
            k = exits.simulate_exits(lg_cal, me.exit_layers, "entropy", op.setting).exit_index
            fractions = fit_fractions(
                # [x n]: segment j (the layers up to exit j) runs the examples leaving at j
                # or later.
                k[None] >= np.arange(me.num_exits)[:, None],
                calib.batches,
                config.eval.batch_size,
                config.exits.exit_buckets,
                functools.partial(segment_flops, me),
                given=fractions,
            )
        known["bucket_fractions"] = list(fractions)
    threshold = float(known["setting"]["threshold"])
    layers_at = np.asarray(me.exit_layers)
    step = me.exit_step(
        config.eval.batch_size, "entropy", bucket_fractions=known["bucket_fractions"]
    )
    last = me.num_exits - 1

    def forward(batch):
        return step(batch_inputs(batch), valid=batch.valid, threshold=threshold)

    def decode(batch, out):
        v = batch.valid
        t = padded_length(batch)
        k = np.asarray(out.exit_index)[v]
        layers = layers_at[k]
        cost = np.cumsum(segment_flops(me, t))[k]
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
