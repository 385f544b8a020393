"""Knowledge distillation as a loss hook: a Swift learns from its Super's soft labels.

A Swift that agrees with its Super routes better: the inputs it is unsure of are the ones
where the Super's answer differs from its own, so escalation is spent where it changes the
prediction. The loss is Hinton et al.'s:

    L = alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) ||
        softmax(student / T)),

with the teacher's logits computed once, before training, over the very training set the run
trains on (`training_set_logits`: after its calibration holdout and `train_limit`, in order, each
example tokenized by the teacher's own tokenizer), saved as a .npy file and handed to every
batch by the loop (`example_arrays`).

Shape vocabulary: n training examples, b batch rows, c classes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from elang_jax import data
from elang_jax.checkpoints import sha256_of
from elang_jax.training._config import FinetuneConfig, config_json
from elang_jax.training._data import encode_split
from elang_jax.training._hooks import masked_cross_entropy


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Distillation from precomputed teacher logits.

    Attributes:
      teacher_file: a .npy of [n c] float32 teacher logits, one row per training example of
        the run (after its holdout and `train_limit`, in order), from `training_set_logits`.
      temperature: softmax temperature T of both distributions in the KL term (> 0).
      alpha: weight of the hard-label cross-entropy, in [0, 1]; the KL term gets 1 - alpha.
    """

    teacher_file: str | os.PathLike[str]  # a str after __post_init__
    temperature: float = 2.0
    alpha: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "teacher_file", os.fspath(self.teacher_file))
        if not self.teacher_file:
            raise ValueError(f"teacher_file must name a .npy file, got {self.teacher_file=}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature=}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha=}")


@dataclasses.dataclass(frozen=True)
class DistillationLoss:
    """The trainer's loss hook (`elang_jax.training.LossHook`) for distillation.

    The teacher's logits reach every batch as `batch["teacher_logits"]` (padding rows get
    zeros and count for nothing). The run records the teacher file's sha256 with the loss,
    so a run never resumes against other teacher logits.
    """

    config: DistillConfig

    def example_arrays(self, num_examples: int) -> dict[str, np.ndarray]:
        """{"teacher_logits": [n c] float32}, checked against the training set's size."""
        path = self.config.teacher_file
        logits = np.load(path)
        if logits.ndim != 2 or logits.shape[0] != num_examples or logits.shape[1] < 2:
            raise ValueError(
                f"{path} must hold [{num_examples}, classes] teacher logits (one row per "
                f"training example after the holdout), got shape {logits.shape}"
            )
        if not np.issubdtype(logits.dtype, np.floating) or not np.isfinite(logits).all():
            raise ValueError(f"{path} must hold finite float logits, got {logits.dtype}")
        return {"teacher_logits": logits.astype(np.float32)}

    def __call__(
        self, outputs: Any, batch: Mapping[str, Array], step: Int[Array, ""], key: jax.Array
    ) -> tuple[Float[Array, ""], dict[str, Array]]:
        del step, key
        logits = outputs.logits.astype(jnp.float32)
        teacher = batch["teacher_logits"]
        if teacher.shape != logits.shape:
            raise ValueError(
                f"teacher logits {teacher.shape} do not match the student's {logits.shape}"
            )
        valid = batch["valid"].astype(bool)
        ce = masked_cross_entropy(logits, batch["labels"], valid)
        t = self.config.temperature
        p_teacher = jax.nn.softmax(teacher / t, -1)
        # [b c] -> [b]: KL(teacher || student) at temperature t, per row.
        kl = (
            p_teacher * (jax.nn.log_softmax(teacher / t, -1) - jax.nn.log_softmax(logits / t, -1))
        ).sum(-1)
        kd = jnp.where(valid, kl, 0.0).sum() / jnp.maximum(valid.sum(), 1) * t * t
        a = self.config.alpha
        return a * ce + (1.0 - a) * kd, {"ce": ce, "kd": kd}

    def to_json(self) -> dict[str, Any]:
        """How a run records this loss in its config.json (the teacher file by content)."""
        fields = config_json(self.config)
        fields.pop("teacher_file")
        return {
            "name": "distillation",
            "teacher_sha256": sha256_of(Path(self.config.teacher_file)),
            **fields,
        }


def training_set_logits(
    teacher: nnx.Module,
    tokenizer: Any,
    student: FinetuneConfig,
    *,
    batch_size: int = 64,
    buckets: tuple[int, ...] | None = None,
) -> tuple[Float[np.ndarray, "n c"], Int[np.ndarray, " n"]]:
    """A classifier's logits over the training set `student` trains on, in its order: a
    teacher's soft labels, or a model's own mistakes (CascadeBERT's hard flags).

    Args:
      teacher: a classifier (`outputs.logits`), with `config.vocab_size`.
      tokenizer: the teacher's own tokenizer (it may differ from the student's).
      student: the student's fine-tuning config: its task, holdout, `train_limit` and
        `max_length` decide the examples and their truncation.
      batch_size: rows per forward pass.
      buckets: padded lengths; None: the student's `buckets`.

    Returns:
      ([n c] float32 logits, [n] labels), row i for the student's training example i.
    """
    vocab = teacher.config.vocab_size  # pyright: ignore[reportAttributeAccessIssue]
    train = encode_split(tokenizer, student, "train", student.train_limit, vocab)
    graphdef, state = nnx.split(teacher)

    @jax.jit
    def run(state, input_ids, attention_mask, token_type_ids):
        out = nnx.merge(graphdef, state)(input_ids, attention_mask, token_type_ids)
        return out.logits.astype(jnp.float32)

    idx, vals = [], []
    for b in data.iterate_batches(
        train,
        batch_size,
        data.LengthBuckets(buckets or student.buckets),
        shuffle=False,
        sort_by_length=True,
    ):
        logits = np.asarray(run(state, b.input_ids, b.attention_mask, b.token_type_ids))
        idx.append(b.index[b.valid])
        vals.append(logits[b.valid])
    assert train.labels is not None  # GLUE training splits are labelled
    return data.restore_order(idx, vals, len(train)).astype(np.float32), np.asarray(train.labels)
