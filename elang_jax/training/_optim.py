"""The fine-tuning optimizer: AdamW with linear warmup, linear or cosine decay, clipping."""

from __future__ import annotations

from typing import Any

import jax
import optax

from elang_jax.training._config import FinetuneConfig, Schedule

# Parameter names that get no weight decay: every bias, and LayerNorm's scale (its bias is
# covered by "bias"). The usual BERT recipe.
_NO_DECAY_NAMES = ("bias", "scale")


def learning_rate_schedule(config: FinetuneConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `config.learning_rate`, then linear or cosine decay to 0.

    Args:
      config: gives the peak rate, warmup fraction and decay shape.
      total_steps: length of the whole schedule in optimizer steps.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps=}")
    warmup = int(round(config.warmup_ratio * total_steps))
    decay = max(total_steps - warmup, 1)
    if config.schedule is Schedule.COSINE:
        after = optax.cosine_decay_schedule(config.learning_rate, decay)
    else:
        after = optax.linear_schedule(config.learning_rate, 0.0, decay)
    if warmup == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate, warmup), after], [warmup]
    )


def weight_decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: all but biases and LayerNorm scales.

    Args:
      params: a parameter pytree (an `nnx.State` of `nnx.Param`s, or nested dicts).

    Returns:
      A pytree of bools with the structure of `params`.
    """

    def decays(path: tuple[Any, ...], _: Any) -> bool:
        # The parameter's name is the last dict key; an nnx Variable adds a `.value` attribute
        # key after it.
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return not names or str(names[-1]) not in _NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: FinetuneConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with warmup and decay, global-norm clipping, and no decay on biases/LayerNorm.

    Args:
      config: learning rate, schedule, weight decay and clipping settings.
      total_steps: length of the learning-rate schedule in steps.

    Returns:
      The optax transformation; its state is float32 like the parameters.
    """
    adamw = optax.adamw(
        learning_rate_schedule(config, total_steps),
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=config.weight_decay,
        mask=weight_decay_mask,
    )
    if config.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)
