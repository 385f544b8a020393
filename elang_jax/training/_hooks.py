"""The train step's two hooks: what the forward pass runs, and how its outputs become the loss.

Inside the differentiated function of every train step (`make_train_step`)::

    outputs = forward(model, batch, rngs, variant)       # ForwardHook
    loss, metrics = loss_hook(outputs, batch, step, key)  # LossHook

The defaults are the classifier's own forward (`classifier_forward`) and the mean
cross-entropy over the valid rows (`cross_entropy_loss`): plain fine-tuning. Method-specific
objectives live next to their method and plug in here, for example CascadeBERT's
difficulty-aware loss (`elang_jax.cascade._dar.DifficultyAwareLoss`) or ACC's forward with
token elimination (`elang_jax.pruning.AccForward`).

Two optional methods widen what a hook can do, and the training loop looks for them:
  * `loss_hook.example_arrays(num_examples) -> {name: [n, ...] array}`: per-training-example
    data the loss reads (CascadeBERT's "hard" flags). Each batch carries `name` with the rows
    of its examples; padding rows get zeros (False).
  * `forward.variant(step) -> hashable`: a static setting chosen per step (ACC's keep rate);
    it reaches the forward as `variant`, and each distinct value compiles its own step.
Either hook may also define `to_json()`: it is recorded in the run's config.json, so that a
run never resumes under a different objective. Hooks must be hashable (a function, or a
frozen dataclass): compiled steps are cached on them.

Shape vocabulary: b batch rows, c classes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int


@runtime_checkable  # beartype checks arguments against it under pytest
class LossHook(Protocol):
    """Turns a forward pass into the training loss (traced inside the jitted step).

    Args:
      outputs: what the forward hook returned (a classifier output with `.logits`).
      batch: the device batch: [b t] input_ids, attention_mask, token_type_ids, [b] labels,
        valid, plus the hook's own `example_arrays`.
      step: the int32 step number.
      key: the step's PRNG key (the dropout key); fold in a constant of your own to draw
        numbers independent of dropout.

    Returns:
      (scalar loss, {name: scalar metric}); the metrics are logged with the loss.
    """

    def __call__(
        self, outputs: Any, batch: Mapping[str, Array], step: Int[Array, ""], key: jax.Array
    ) -> tuple[Float[Array, ""], Mapping[str, Array]]: ...


@runtime_checkable  # beartype checks arguments against it under pytest
class ForwardHook(Protocol):
    """Runs the model on a batch inside the differentiated function (traced).

    Args:
      model: the merged model (parameters being differentiated).
      batch: the device batch (see `LossHook`).
      rngs: dropout randomness of this step.
      variant: the hook's `variant(step)`, or None when it has none (static under jit).
    """

    def __call__(
        self, model: nnx.Module, batch: Mapping[str, Array], rngs: nnx.Rngs, variant: Hashable
    ) -> Any: ...


def masked_cross_entropy(
    logits: Float[Array, "b c"], labels: Int[Array, " b"], valid: Bool[Array, " b"]
) -> Float[Array, ""]:
    """Mean softmax cross-entropy over the valid rows only (padding rows count for nothing).

    A batch without valid rows has loss 0, not NaN.
    """
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    weight = valid.astype(jnp.float32)
    return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def cross_entropy_loss(
    outputs: Any, batch: Mapping[str, Array], step: Int[Array, ""], key: jax.Array
) -> tuple[Float[Array, ""], dict[str, Array]]:
    """The default `LossHook`: mean cross-entropy of `outputs.logits` over the valid rows."""
    del step, key
    return masked_cross_entropy(outputs.logits, batch["labels"], batch["valid"]), {}


def classifier_forward(
    model: nnx.Module, batch: Mapping[str, Array], rngs: nnx.Rngs, variant: Hashable = None
) -> Any:
    """The default `ForwardHook`: the classifier on the batch's three input arrays."""
    del variant
    return model(  # pyright: ignore[reportCallIssue]
        batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], rngs=rngs
    )


def hook_json(hook: Any) -> Any:
    """How a hook is recorded in a run's config.json: its `to_json()`, else its name."""
    to_json = getattr(hook, "to_json", None)
    if callable(to_json):
        return to_json()
    name = getattr(hook, "__qualname__", None) or type(hook).__qualname__
    module = getattr(hook, "__module__", None) or type(hook).__module__
    return f"{module}.{name}"


def example_arrays(loss: Any, num_examples: int) -> dict[str, np.ndarray]:
    """The loss hook's per-training-example arrays (none for hooks without any)."""
    method = getattr(loss, "example_arrays", None)
    if method is None:
        return {}
    arrays = {name: np.asarray(a) for name, a in method(num_examples).items()}
    for name, a in arrays.items():
        if a.ndim < 1 or a.shape[0] != num_examples:
            raise ValueError(
                f"example array {name!r} must have {num_examples} rows (one per training "
                f"example), got shape {a.shape}"
            )
    return arrays


def step_variant(forward: Any, step: int) -> Hashable:
    """The forward hook's static setting for `step`; None for hooks without one."""
    method = getattr(forward, "variant", None)
    return None if method is None else method(step)
