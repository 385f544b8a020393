"""Parameter calibration: a brief fine-tune of a MoEfied classifier with its routing fixed.

MoEfication leaves every weight as it was; the model then sees FFN outputs with the
unselected experts' share missing. A few hundred steps of the ordinary classification loss,
with the routers frozen, let the rest of the network adapt to the sparse FFNs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
from flax import nnx

from elang_jax import data, training


def _trainable(path: tuple[Any, ...], value: Any) -> bool:
    # Routers stay as trained on the dense activations: top-k selection passes them no
    # gradient, and weight decay alone would only shrink them.
    return isinstance(value, nnx.Param) and not any(str(part).startswith("router") for part in path)


def calibrate_moefied(
    model: nnx.Module,
    batches: Iterable[data.Batch],
    steps: int,
    config: training.FinetuneConfig,
    *,
    seed: int = 0,
) -> list[float]:
    """Fine-tunes `model` in place for `steps` steps, routers frozen; returns the losses.

    Args:
      model: a MoEfied classifier called as `model(input_ids, attention_mask,
        token_type_ids, rngs=...)` returning `.logits`.
      batches: labelled training batches (at least `steps` of them).
      steps: optimizer steps, >= 1.
      config: learning rate, schedule, weight decay and clipping (`make_optimizer`).
      seed: dropout seed.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    graphdef, params, rest = nnx.split(model, _trainable, ...)
    optimizer = training.make_optimizer(config, steps)
    opt_state = optimizer.init(params)
    step_fn = training.make_train_step(graphdef, optimizer, jax.random.key(seed))
    losses = []
    done = 0
    for batch in batches:
        if done == steps:
            break
        device_batch = dict(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            token_type_ids=batch.token_type_ids,
            labels=batch.labels,
            valid=batch.valid,
        )
        params, opt_state, metrics = step_fn(params, rest, opt_state, device_batch, done)
        losses.append(float(metrics["loss"]))
        done += 1
    if done < steps:
        raise ValueError(f"batches ran out after {done} of {steps} steps")
    nnx.update(model, params)
    return [float(v) for v in np.asarray(losses)]
