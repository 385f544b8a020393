"""Fine-tuning with elimination active: a train step whose forward drops tokens.

As in the ACC paper, the model is fine-tuned while its layers drop tokens, so that it learns
to classify from what survives. The speed knob may change from batch to batch (one compiled
step per (bucket, schedule)), which trains one model for a whole range of offline-chosen
speeds. Selection is a hard top-k: no gradient flows into the scores; gradients reach the
kept tokens through the gathers.

The step follows `elang_jax.training.make_train_step` (split once, merge inside the trace,
dropout key folded with the step number) and reuses its loss.
"""

from __future__ import annotations

import functools

import jax
import optax
from flax import nnx

from elang_jax.pruning._encoders import acc_classify
from elang_jax.pruning._schedule import KeepSchedule
from elang_jax.training import masked_cross_entropy


def make_acc_train_step(
    graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, dropout_key: jax.Array
):
    """A jitted train step for a split BERT-family classifier with ACC pruning.

    Returns:
      `step_fn(params, rest, opt_state, batch, step, schedule) -> (params, opt_state,
      metrics)`: `batch` a dict of [b t] input_ids, attention_mask, token_type_ids and [b]
      labels, valid; `schedule` a `KeepSchedule` (static); `metrics` the scalar `loss` and
      `grad_norm`.
    """

    @functools.partial(jax.jit, static_argnames="schedule")
    def step_fn(params, rest, opt_state, batch, step, schedule: KeepSchedule):
        key = jax.random.fold_in(dropout_key, step)

        def loss_fn(p):
            model = nnx.merge(graphdef, p, rest)
            out = acc_classify(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                batch["token_type_ids"],
                schedule,
                rngs=nnx.Rngs(dropout=key),
            )
            return masked_cross_entropy(out.logits, batch["labels"], batch["valid"])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return step_fn
