"""The functional train step: split once, merge inside the trace, differentiate the hooks.

The model is split once with `nnx.split` into a static graph definition and state pytrees;
the jitted step merges them back inside the trace, so only arrays cross the `jax.jit`
boundary (the cheapest per-call path in NNX).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import jax
import optax
from flax import nnx
from jaxtyping import Array

from elang_jax.training._hooks import (
    ForwardHook,
    LossHook,
    classifier_forward,
    cross_entropy_loss,
)

TrainStep = Callable[..., tuple[Any, Any, dict[str, Array]]]


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    dropout_key: jax.Array,
    *,
    loss: LossHook | None = None,
    forward: ForwardHook | None = None,
) -> TrainStep:
    """A jitted functional train step for a split classifier.

    Args:
      graphdef: the static part of `nnx.split(model, nnx.Param, ...)`.
      optimizer: the optax transformation (e.g. `make_optimizer`).
      dropout_key: base key; step `s` drops out with `fold_in(dropout_key, s)`, so a resumed
        run draws the same masks as an uninterrupted one. The loss hook gets that key too.
      loss: the loss hook (`LossHook`); None: `cross_entropy_loss`.
      forward: the forward hook (`ForwardHook`); None: `classifier_forward`.

    Returns:
      `step_fn(params, rest, opt_state, batch, step, variant=None) -> (params, opt_state,
      metrics)`, where `rest` is the non-parameter state from the split, `batch` a dict of
      [b t] input_ids, attention_mask, token_type_ids and [b] labels, valid (plus whatever
      the loss hook reads), `step` an int32 scalar, `variant` the forward's static setting
      (hashable; one compiled program per value), and `metrics` holds the scalar `loss`,
      `grad_norm` (before clipping) and the loss hook's own metrics.
    """
    loss_hook: LossHook = cross_entropy_loss if loss is None else loss
    forward_hook: ForwardHook = classifier_forward if forward is None else forward

    def step_fn(params, rest, opt_state, batch: Mapping[str, Any], step, variant: Hashable = None):
        key = jax.random.fold_in(dropout_key, step)

        def loss_fn(p):
            model = nnx.merge(graphdef, p, rest)
            # Built inside the differentiated function: nnx.Rngs counts its draws, and a
            # counter created outside this trace could not be updated from within it.
            rngs = nnx.Rngs(dropout=key)
            outputs = forward_hook(model, batch, rngs, variant)
            value, metrics = loss_hook(outputs, batch, step, key)
            return value, dict(metrics)

        (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {**metrics, "loss": value, "grad_norm": optax.global_norm(grads)}

    # No buffer donation: after a Ctrl-C that lands mid-step, the previous parameters must
    # still be alive to be checkpointed.
    return jax.jit(step_fn, static_argnames="variant")
