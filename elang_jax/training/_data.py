"""The fine-tuning data: a task's split read, held out, limited and encoded; device batches."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from elang_jax import data
from elang_jax.training._config import FinetuneConfig

log = logging.getLogger(__name__)


def subset(examples: data.GlueExamples, limit: int | None) -> data.GlueExamples:
    """The first `limit` examples (all of them for None)."""
    if limit is None or limit >= len(examples):
        return examples
    return data.GlueExamples(
        text_a=examples.text_a[:limit],
        text_b=None if examples.text_b is None else examples.text_b[:limit],
        labels=None if examples.labels is None else examples.labels[:limit],
    )


def encode_split(
    tokenizer: Any, config: FinetuneConfig, split: str, limit: int | None, vocab: int
) -> data.Encoded:
    """`split` of `config.task` from `config.data_source`, without the calibration holdout
    when it is the training split, cut to `limit` examples and encoded."""
    examples = data.load_glue(config.task, split, config.data_source, config.data_dir)
    if split == "train" and config.holdout:
        # The held-out examples calibrate thresholds later: they must never be trained on.
        kept, _ = data.calibration_split(
            examples, config.holdout, config.holdout_seed, config.holdout_kind
        )
        examples = data.select_examples(examples, kept)
    examples = subset(examples, limit)
    encoded = data.encode_glue(
        tokenizer, examples, config.max_length, truncate=config.truncate, vocab_size=vocab
    )
    if encoded.num_truncated:
        log.warning(
            "%s %s: truncated %d of %d examples to %d tokens",
            config.task,
            split,
            encoded.num_truncated,
            len(encoded),
            config.max_length,
        )
    return encoded


def device_batch(batch: data.Batch) -> dict[str, np.ndarray | jax.Array]:
    """The arrays of a batch that the compiled steps read."""
    # `index` stays on the host: the step never needs it.
    return dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        token_type_ids=batch.token_type_ids,
        labels=batch.labels,
        valid=batch.valid,
    )


def batch_rows(arrays: Mapping[str, np.ndarray], batch: data.Batch) -> dict[str, np.ndarray]:
    """The batch's rows of per-example arrays; padding rows get zeros (False)."""
    out = {}
    for name, a in arrays.items():
        valid = batch.valid.reshape(-1, *([1] * (a.ndim - 1)))
        out[name] = np.where(valid, a[batch.index], np.zeros((), a.dtype))
    return out
