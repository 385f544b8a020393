"""Fine-tuning with elimination active: the generic trainer with a forward that drops tokens.

As in the ACC paper, the model is fine-tuned while its layers drop tokens, so that it learns
to classify from what survives. The speed knob may change from batch to batch (one compiled
step per (bucket, rate)), which trains one model for a whole range of offline-chosen
speeds. Selection is a hard top-k: no gradient flows into the scores; gradients reach the
kept tokens through the gathers.

Nothing here is a training loop of its own: `AccForward` is a forward hook of
`elang_jax.training` (`ForwardHook`), so ACC fine-tuning runs through
`training.train_and_evaluate`, with its checkpoints, exact resume, metrics and export, and
`make_acc_train_step` is `training.make_train_step` with that forward.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array

from elang_jax import training
from elang_jax.pruning._encoders import PrunedOutput, acc_classify
from elang_jax.pruning._schedule import AccConfig, KeepSchedule
from elang_jax.training._step import TrainStep


def acc_forward(
    model: nnx.Module, batch: Mapping[str, Array], rngs: nnx.Rngs, variant: Hashable
) -> PrunedOutput:
    """A `ForwardHook` running the classifier with ACC pruning under the `KeepSchedule`
    given as `variant`."""
    if not isinstance(variant, KeepSchedule):
        raise TypeError(f"acc_forward needs a KeepSchedule as its variant, got {variant!r}")
    return acc_classify(
        model,  # pyright: ignore[reportArgumentType]
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        variant,
        rngs=rngs,
    )


@functools.lru_cache(maxsize=8)
def _draws(seed: int, n: int, size: int) -> np.ndarray:
    # Legacy RandomState: `randint(n, size=k)` is the prefix of any longer draw and equals k
    # successive `randint(n)` calls, so the rate of step s never depends on how far a run
    # got before resuming.
    return np.random.RandomState(seed).randint(n, size=size)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccForward:
    """The trainer's forward hook for ACC fine-tuning: each step runs the classifier with
    token elimination at a speed knob drawn from `rates`.

    Step s uses `rates[i_s]`, where i_0, i_1, ... are successive `randint(len(rates))` draws
    of `np.random.RandomState(seed)`: a function of the step, so resuming is exact.

    Attributes:
      rates: candidate speed knobs in (0, 1] (1.0: no pruning).
      acc: the ACC method settings (variant, profile, ...).
      seed: seed of the draws (the run's seed, usually).
    """

    rates: tuple[float, ...]
    acc: AccConfig = dataclasses.field(default_factory=AccConfig.bert)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        if not self.rates or any(not 0.0 < r <= 1.0 for r in self.rates):
            raise ValueError(f"rates must be speed knobs in (0, 1], got {self.rates=}")
        if not isinstance(self.acc, AccConfig):
            raise ValueError(f"acc must be an AccConfig, got {type(self.acc)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed=}")

    def variant(self, step: int) -> float:
        """The speed knob of `step`."""
        size = max(1024, 1 << (int(step) + 1).bit_length())
        return self.rates[int(_draws(self.seed, len(self.rates), size)[step])]

    def __call__(
        self, model: nnx.Module, batch: Mapping[str, Array], rngs: nnx.Rngs, variant: Hashable
    ) -> PrunedOutput:
        assert isinstance(variant, float)
        num_layers = model.config.num_layers  # pyright: ignore[reportAttributeAccessIssue]
        schedule = KeepSchedule.from_speed(variant, num_layers, self.acc)
        return acc_forward(model, batch, rngs, schedule)

    def to_json(self) -> dict[str, Any]:
        """How a run records this forward in its config.json."""
        return {"name": "acc", **training.config_json(self)}


def finetune_acc(
    config: training.FinetuneConfig,
    workdir: str | Path,
    rates: Sequence[float],
    acc: AccConfig | None = None,
) -> dict[str, Any]:
    """Fine-tunes a classifier with ACC elimination active (`AccForward`), through
    `elang_jax.training.train_and_evaluate`: same checkpoints, exact resume, metrics.jsonl,
    `final/` export. Evaluation runs the unpruned model.

    Args:
      config: the fine-tuning settings.
      workdir: the run directory.
      rates: candidate speed knobs, one drawn per step (seeded by `config.seed`).
      acc: the ACC settings; None: `AccConfig.bert()`.

    Returns:
      The final (unpruned) evaluation metrics plus `step`.
    """
    forward = AccForward(rates=tuple(rates), acc=acc or AccConfig.bert(), seed=config.seed)
    return training.train_and_evaluate(config, workdir, forward=forward)


def make_acc_train_step(
    graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, dropout_key: jax.Array
) -> TrainStep:
    """A jitted train step for a split BERT-family classifier with ACC pruning.

    Returns:
      `step_fn(params, rest, opt_state, batch, step, schedule) -> (params, opt_state,
      metrics)`: `batch` a dict of [b t] input_ids, attention_mask, token_type_ids and [b]
      labels, valid; `schedule` a `KeepSchedule` (static); `metrics` the scalar `loss` and
      `grad_norm`.
    """
    return training.make_train_step(graphdef, optimizer, dropout_key, forward=acc_forward)
