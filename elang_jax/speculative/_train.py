"""Training a decoder to draft from its own early layers (LayerSkip's recipe).

Two parts, both from LayerSkip (Elhoushi et al., ACL 2024):
  * early-exit loss: every layer's output goes through the shared final norm and LM head
    and gets a next-token cross-entropy; layer l (1-based, of L) is weighted
    `exit_scale * l / L` (later exits count more), the last layer 1, normalised to sum 1;
  * layer dropout rising with depth: during training each row skips layer l (0-based) with
    probability `max_dropout * l / (L - 1)` (the first layer never), so the later layers
    learn to refine rather than rewrite, and the early exits stay close to the final one.

Plain LM training is the same loop with `LayerSkipConfig.plain()` (last layer only, no
dropout). Shape names: b batch, t block length, v vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from elang_jax.models._gpt2 import GPT2LMHeadModel, causal_bias


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerSkipConfig:
    """The drafting recipe's knobs.

    Attributes:
      exit_scale: weight of the early exits' losses relative to the last layer's (0: plain
        LM loss on the last layer only).
      max_dropout: layer-dropout probability of the last layer (the first gets 0), in [0, 1).
      learning_rate: peak AdamW learning rate (linear warm-up, then constant).
      warmup_steps: steps of linear warm-up.
      weight_decay: AdamW decoupled weight decay.
    """

    exit_scale: float = 1.0
    max_dropout: float = 0.2
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01

    def __post_init__(self):
        for name in ("exit_scale", "learning_rate", "weight_decay"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")
        if not 0.0 <= self.max_dropout < 1.0:
            raise ValueError(f"max_dropout must lie in [0, 1), got {self.max_dropout!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")

    @classmethod
    def plain(cls, **kw) -> LayerSkipConfig:
        """Plain next-token training: the last layer's loss only, no layer dropout."""
        return cls(**{"exit_scale": 0.0, "max_dropout": 0.0, **kw})

    def exit_weights(self, num_layers: int) -> np.ndarray:
        """[L] loss weight of each layer's exit, summing to 1."""
        w = self.exit_scale * np.arange(1, num_layers + 1, dtype=np.float64) / num_layers
        w[-1] = 1.0
        return (w / w.sum()).astype(np.float32)

    def dropout_rates(self, num_layers: int) -> np.ndarray:
        """[L] probability that a row skips each layer in training (0 for the first)."""
        return (self.max_dropout * np.arange(num_layers) / max(num_layers - 1, 1)).astype(
            np.float32
        )


def layerskip_loss(
    model: GPT2LMHeadModel,
    tokens: Int[Array, "b t"],
    config: LayerSkipConfig,
    key: jax.Array | None,
) -> Float[Array, ""]:
    """The weighted next-token cross-entropy of every exit, with layer dropout when `key`
    is given (training) and without it (None: evaluation). Blocks are full (no padding)."""
    tr = model.transformer
    num_layers = len(tr.layers)
    b, t = tokens.shape
    weights = config.exit_weights(num_layers)
    rates = config.dropout_rates(num_layers)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    bias = causal_bias(positions, positions)
    h = tr.embed(tokens, positions)
    targets = tokens[:, 1:]
    total = jnp.zeros((), jnp.float32)
    for i, layer in enumerate(tr.layers):
        out, _, _ = layer(h, bias)
        if key is not None and rates[i] > 0:
            key, sub = jax.random.split(key)
            # [b 1 1] a row keeps its input (skips the layer) with probability rates[i].
            skip = jax.random.bernoulli(sub, float(rates[i]), (b, 1, 1))
            out = jnp.where(skip, h, out)
        h = out
        if weights[i] > 0:
            logits = model.logits(h[:, :-1])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
            total = total + float(weights[i]) * jnp.mean(ce)
    return total


def exit_losses(model: GPT2LMHeadModel, tokens: Int[Array, "b t"]) -> Float[Array, " l"]:
    """[L] mean next-token cross-entropy at each layer's exit (no dropout)."""
    tr = model.transformer
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    out = tr.run_layers(tr.embed(tokens, positions), None, output_hidden_states=True)
    assert out.hidden_states is not None
    losses = [
        jnp.mean(
            optax.softmax_cross_entropy_with_integer_labels(model.logits(h[:, :-1]), tokens[:, 1:])
        )
        for h in out.hidden_states[1:]
    ]
    return jnp.stack(losses)


@dataclasses.dataclass(frozen=True)
class TrainLog:
    """steps run, seconds spent, and the loss every `log_every` steps."""

    steps: int
    seconds: float
    losses: tuple[float, ...]


def train_decoder(
    model: GPT2LMHeadModel,
    batches: Iterator[Int[np.ndarray, "b t"]],
    config: LayerSkipConfig,
    *,
    steps: int,
    seed: int = 0,
    log_every: int = 50,
    progress: Callable[[int, float], None] | None = None,
) -> TrainLog:
    """Trains `model` in place for `steps` AdamW steps on token blocks from `batches`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1)),
            optax.constant_schedule(config.learning_rate),
        ],
        [max(config.warmup_steps, 1)],
    )
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=config.weight_decay)
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, tokens, key):
        def loss_fn(p):
            return layerskip_loss(nnx.merge(graphdef, p, rest), tokens, config, key)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key = jax.random.key(seed)
    losses, start = [], time.perf_counter()
    for i in range(steps):
        key, sub = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, jnp.asarray(next(batches)), sub)
        if (i + 1) % log_every == 0 or i + 1 == steps:
            losses.append(float(loss))
            if progress is not None:
                progress(i + 1, losses[-1])
    nnx.update(model, params)
    return TrainLog(steps=steps, seconds=time.perf_counter() - start, losses=tuple(losses))


def exit_agreement(model: GPT2LMHeadModel, tokens: Int[Array, "b t"]) -> Float[Array, " l"]:
    """[L] share of positions where each layer's exit (shared norm and head) predicts the
    same next token as the last layer: teacher-forced on real text, the draft's acceptance
    rate per token before any drift, which greedy continuations (often repetitive) hide."""
    tr = model.transformer
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    out = tr.run_layers(tr.embed(tokens, positions), None, output_hidden_states=True)
    assert out.hidden_states is not None
    final = jnp.argmax(model.logits(out.hidden_states[-1]), axis=-1)
    return jnp.stack(
        [jnp.mean(jnp.argmax(model.logits(h), axis=-1) == final) for h in out.hidden_states[1:]]
    )
