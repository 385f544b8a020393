"""CascadeBERT difficulty labels from the small model's own behaviour.

An example is "hard" when any of several checkpoints of the small model's fine-tuning run
gets it wrong, "easy" when all get it right (CascadeBERT's 2-level labels, here over the
checkpoints of one run instead of 5 seeds: the same signal at a fifth of the cost).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from elang_jax import data
from elang_jax.training._config import FinetuneConfig
from elang_jax.training._data import encode_split
from elang_jax.training._eval import _logits
from elang_jax.training._finetune import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    _abstract,
    build_model,
    stored_run_settings,
)


def load_run_config(workdir: str | Path) -> FinetuneConfig:
    """The FinetuneConfig a workdir was trained with (its config.json; the loss and forward
    hooks recorded there are not part of it)."""
    fields = stored_run_settings(workdir)
    if fields is None:
        raise FileNotFoundError(f"{Path(workdir) / CONFIG_FILE} does not exist")
    for hook in ("loss", "forward"):
        fields.pop(hook, None)
    if fields.get("model_config") is not None:
        raise ValueError(f"{workdir}: runs from a random model_config cannot be reloaded here")
    fields["buckets"] = tuple(fields["buckets"])
    return FinetuneConfig(**fields)


def checkpoint_predictions(
    workdir: str | Path, max_checkpoints: int = 3, config: FinetuneConfig | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Predictions of up to `max_checkpoints` evenly spaced checkpoints of a run on its own
    training set (after the holdout, in order).

    Args:
      workdir: the run's directory.
      max_checkpoints: how many checkpoints to use.
      config: the run's config; read from workdir/config.json when None.

    Returns:
      (predictions [k, n], labels [n], checkpoint steps).
    """
    config = load_run_config(workdir) if config is None else config
    model = build_model(config)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokenizer_dir = config.tokenizer_dir or config.model_dir
    assert tokenizer_dir is not None  # checked by FinetuneConfig
    tokenizer = data.load_tokenizer(tokenizer_dir)
    train = encode_split(tokenizer, config, "train", config.train_limit, model.config.vocab_size)
    buckets = data.LengthBuckets(config.buckets)
    manager = ocp.CheckpointManager((Path(workdir) / CHECKPOINT_DIR).absolute())
    steps = sorted(manager.all_steps())
    if not steps:
        raise FileNotFoundError(f"{workdir} holds no checkpoints")
    pick = sorted({steps[int(round(i))] for i in np.linspace(0, len(steps) - 1, max_checkpoints)})
    preds = []
    for step in pick:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(params))),
        )
        g, state = nnx.split(nnx.merge(graphdef, restored["params"], rest))
        idx, vals = [], []
        for b in data.iterate_batches(
            train, config.eval_batch_size, buckets, shuffle=False, sort_by_length=True
        ):
            batch = dict(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                token_type_ids=b.token_type_ids,
            )
            logits = np.asarray(_logits(g, state, batch))
            idx.append(b.index[b.valid])
            vals.append(logits[b.valid].argmax(-1))
        preds.append(data.restore_order(idx, vals, len(train)))
    manager.close()
    return np.stack(preds), np.asarray(train.labels), pick


def difficulty_labels(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[n] bool: hard when any checkpoint is wrong."""
    return (np.asarray(predictions) != np.asarray(labels)[None, :]).any(axis=0)
