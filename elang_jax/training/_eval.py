"""Evaluation of a fine-tuned classifier: batched logits, accuracy and F1.

Shape vocabulary: b batch rows, c classes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float

from elang_jax import data
from elang_jax.training._data import device_batch


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef: nnx.GraphDef, state: Any, batch: Mapping[str, Array]) -> Float[Array, "b c"]:
    # graphdef is hashable, so every evaluation of the same architecture reuses one compiled
    # program per bucket.
    model = nnx.merge(graphdef, state)
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits


def classification_metrics(
    predictions: np.ndarray, labels: np.ndarray, metrics: Sequence[str] = ("accuracy",)
) -> dict[str, float]:
    """Accuracy and binary F1 (class 1 positive, as GLUE scores MRPC).

    Args:
      predictions: [n] predicted class ids.
      labels: [n] true class ids.
      metrics: names to compute, from `"accuracy"` and `"f1"`.

    Returns:
      `{name: value}` in [0, 1]. F1 is 0 when there is no true or predicted positive.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"need two [n] arrays, got {predictions.shape=} {labels.shape=}")
    out = {}
    for name in metrics:
        if name == "accuracy":
            out[name] = float(np.mean(predictions == labels)) if labels.size else 0.0
        elif name == "f1":
            tp = int(np.sum((predictions == 1) & (labels == 1)))
            fp = int(np.sum((predictions == 1) & (labels != 1)))
            fn = int(np.sum((predictions != 1) & (labels == 1)))
            out[name] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        else:
            raise ValueError(f"unknown metric {name!r}; choose from 'accuracy', 'f1'")
    return out


def evaluate(
    model: nnx.Module,
    encoded: data.Encoded,
    batch_size: int,
    buckets: data.LengthBuckets | Sequence[int],
    *,
    metrics: Sequence[str] = ("accuracy",),
) -> dict[str, float]:
    """Scores a classifier on an encoded, labelled dataset (no dropout).

    Batches are grouped by length to skip padding; rows that only pad the last batch are
    dropped before scoring.

    Args:
      model: a sequence classifier (`BertForSequenceClassification`).
      encoded: the dataset (`elang_jax.data.encode_glue`), with labels.
      batch_size: rows per batch.
      buckets: padded lengths a batch may have.
      metrics: metric names (`"accuracy"`, `"f1"`); see `GLUE_TASKS[task].metrics`.

    Returns:
      The requested metrics, plus `loss` (mean cross-entropy) and `num_examples`.
    """
    if encoded.labels is None:
        raise ValueError("evaluate needs labels; this dataset has none (a test split?)")
    if not isinstance(buckets, data.LengthBuckets):
        buckets = data.LengthBuckets(tuple(buckets))
    graphdef, state = nnx.split(model)
    preds, labels, losses = [], [], []
    for batch in data.iterate_batches(
        encoded, batch_size, buckets, shuffle=False, sort_by_length=True
    ):
        logits = np.asarray(_logits(graphdef, state, device_batch(batch)))
        keep = batch.valid
        preds.append(np.argmax(logits[keep], axis=-1))
        labels.append(batch.labels[keep])
        losses.append(
            np.asarray(
                optax.softmax_cross_entropy_with_integer_labels(logits[keep], batch.labels[keep])
            )
        )
    if not preds:
        return {**{m: 0.0 for m in metrics}, "loss": 0.0, "num_examples": 0}
    p, y = np.concatenate(preds), np.concatenate(labels)
    out: dict[str, Any] = classification_metrics(p, y, metrics)
    out["loss"] = float(np.mean(np.concatenate(losses)))
    out["num_examples"] = int(y.size)
    return out
