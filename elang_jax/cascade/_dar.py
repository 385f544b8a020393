"""CascadeBERT's difficulty-aware objective.

L = sum_i CE(member_i) + lambda * DAR, where DAR is a margin-ranking loss on the small
model's confidence: for every easy example e in the batch, one hard example h is drawn
uniformly (with replacement) and max(0, margin - (c(e) - c(h))) is paid, so that easy
examples end at least `margin` more confident than hard ones. Difficulty labels come from
the small model's own behaviour (see train/difficulty_labels.py).

Fine-tuning one model with it goes through the generic trainer with a loss hook::

    from elang_jax import training
    from elang_jax.cascade._dar import DarConfig, DifficultyAwareLoss

    loss = DifficultyAwareLoss(DarConfig(difficulty_file="runs/hard.npy"))
    training.train_and_evaluate(config, workdir, loss=loss)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

from elang_jax.training import config_json, masked_cross_entropy


def difficulty_ranking_loss(
    confidence: Float[Array, " b"],
    hard: Bool[Array, " b"],
    key: jax.Array,
    margin: float = 0.5,
    valid: Bool[Array, " b"] | None = None,
) -> Float[Array, ""]:
    """Mean hinge over easy examples, each paired with a random hard one from the batch.

    Zero when the batch holds no easy or no hard example.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    valid = jnp.ones_like(hard, bool) if valid is None else valid.astype(bool)
    hard = hard.astype(bool) & valid
    easy = ~hard & valid
    n_hard = hard.sum()
    # Draw a hard partner for every row: uniform over the hard rows via a categorical on
    # log-weights (-inf on non-hard rows); rows without any hard partner are masked below.
    logits = jnp.where(hard, 0.0, -jnp.inf)
    logits = jnp.where(n_hard > 0, logits, jnp.zeros_like(logits))
    partner = jax.random.categorical(key, logits, shape=hard.shape)
    hinge = jnp.maximum(0.0, margin - (confidence - confidence[partner]))
    use = easy & (n_hard > 0)
    return jnp.where(use, hinge, 0.0).sum() / jnp.maximum(use.sum(), 1)


def cascadebert_loss(
    member_logits: list[Float[Array, "b c"]],
    labels: Int[Array, " b"],
    hard: Bool[Array, " b"],
    key: jax.Array,
    *,
    margin: float = 0.5,
    weight: float = 0.5,
    valid: Bool[Array, " b"] | None = None,
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """Cross-entropy of every member plus `weight` times DAR on the first (smallest) member's
    max-softmax confidence. Returns (loss, parts)."""
    valid = jnp.ones_like(labels, bool) if valid is None else valid.astype(bool)
    denom = jnp.maximum(valid.sum(), 1)
    ces = [
        jnp.where(valid, optax.softmax_cross_entropy_with_integer_labels(lg, labels), 0.0).sum()
        / denom
        for lg in member_logits
    ]
    confidence = jax.nn.softmax(member_logits[0].astype(jnp.float32), -1).max(-1)
    dar = difficulty_ranking_loss(confidence, hard, key, margin, valid)
    total = sum(ces) + weight * dar
    return total, {"ce": jnp.stack(ces), "dar": dar}


# ----------------------------------------------------------------------------------------------
# DAR as a loss hook of the generic trainer


@dataclasses.dataclass(frozen=True, kw_only=True)
class DarConfig:
    """CascadeBERT's difficulty-aware regularisation of one model's fine-tuning.

    Attributes:
      difficulty_file: a .npy of per-example "hard" flags over the training set the run
        trains on (after its calibration holdout and `train_limit`, in order), from
        train/difficulty_labels.py.
      weight: weight of the ranking loss (lambda), added to the cross-entropy.
      margin: its margin m on the max-softmax confidence.
    """

    difficulty_file: str | os.PathLike[str]  # a str after __post_init__
    weight: float = 0.5
    margin: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "difficulty_file", os.fspath(self.difficulty_file))
        if not self.difficulty_file:
            raise ValueError(f"difficulty_file must name a .npy file, got {self.difficulty_file=}")
        if not self.weight >= 0:
            raise ValueError(f"weight must be >= 0, got {self.weight=}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin=}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable description."""
        return config_json(self)


@dataclasses.dataclass(frozen=True)
class DifficultyAwareLoss:
    """The trainer's loss hook (`elang_jax.training.LossHook`) for CascadeBERT's objective:
    cross-entropy plus `weight` times DAR on the model's max-softmax confidence.

    The hard flags reach every batch as `batch["hard"]` (`example_arrays`); the partners
    are drawn with the step's key folded with 1, so that they never correlate with dropout
    and a resumed run draws the same ones.
    """

    config: DarConfig

    def example_arrays(self, num_examples: int) -> dict[str, np.ndarray]:
        """{"hard": [n] bool}, read from `config.difficulty_file` and checked against the
        training set's size."""
        path = self.config.difficulty_file
        hard = np.load(path)
        if hard.shape != (num_examples,) or hard.dtype != bool:
            raise ValueError(
                f"{path} must hold [{num_examples}] bool flags (one per training example "
                f"after the holdout), got {hard.dtype} {hard.shape}"
            )
        return {"hard": hard}

    def __call__(
        self, outputs: Any, batch: Mapping[str, Array], step: Int[Array, ""], key: jax.Array
    ) -> tuple[Float[Array, ""], dict[str, Array]]:
        del step  # the key already depends on it
        logits = outputs.logits
        ce = masked_cross_entropy(logits, batch["labels"], batch["valid"])
        confidence = jax.nn.softmax(logits.astype(jnp.float32), -1).max(-1)
        dar = difficulty_ranking_loss(
            confidence,
            batch["hard"],
            jax.random.fold_in(key, 1),
            self.config.margin,
            batch["valid"],
        )
        return ce + self.config.weight * dar, {"ce": ce, "dar": dar}

    def to_json(self) -> dict[str, Any]:
        """How a run records this loss in its config.json."""
        return {"name": "cascadebert_dar", **self.config.to_json()}
