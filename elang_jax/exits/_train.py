"""Training exits: the joint loss, DeeBERT's second stage and per-exit temperatures.

DeeBERT's recipe: (1) fine-tune the backbone and final head as usual (elang_jax.training);
(2) freeze them and train the off-ramps. With the backbone frozen, every head sees fixed
features, so stage 2 runs the encoder once over the data (`collect_features`) and trains
the heads on them (`train_exit_heads`): the same optimum, at a fraction of the cost.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float, Int

from elang_jax import data as D
from elang_jax.calibration import fit_temperature
from elang_jax.exits._config import LossWeighting, loss_weights
from elang_jax.exits._multi_exit import MultiExit


def joint_loss(
    logits: Float[Array, "x b c"],
    labels: Int[Array, " b"],
    exit_layers: tuple[int, ...],
    weighting: LossWeighting | str = LossWeighting.UNIFORM,
    valid: Array | None = None,
) -> Float[Array, ""]:
    """Weighted mean over exits of the per-exit cross-entropy (mean over valid rows)."""
    w = jnp.asarray(loss_weights(weighting, exit_layers), jnp.float32)
    # [x b c] -> per-exit, per-example CE [x b].
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.broadcast_to(labels, logits.shape[:2])
    )
    v = jnp.ones(labels.shape, jnp.float32) if valid is None else valid.astype(jnp.float32)
    # [x b] * [1 b]
    per_exit = (ce * v[None, :]).sum(-1) / jnp.maximum(v.sum(), 1.0)
    return (w * per_exit).sum()


def collect_features(
    model: MultiExit, encoded: D.Encoded, batch_size: int = 64, buckets=None
) -> tuple[np.ndarray, np.ndarray]:
    """(features [n l+1 d], last_cls [n d]) float32, in example order (see MultiExitOutput)."""
    buckets = buckets or D.LengthBuckets((16, 32, 64, 128))
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, mask, types):
        out = nnx.merge(graphdef, state)(ids, mask, types)
        return out.features.astype(jnp.float32), out.last_cls.astype(jnp.float32)

    idx, feats, last = [], [], []
    for b in D.iterate_batches(encoded, batch_size, buckets, shuffle=False, sort_by_length=True):
        f, c = run(state, b.input_ids, b.attention_mask, b.token_type_ids)
        idx.append(b.index[b.valid])
        feats.append(np.asarray(f)[b.valid])
        last.append(np.asarray(c)[b.valid])
    n = len(encoded)
    return D.restore_order(idx, feats, n), D.restore_order(idx, last, n)


def dataset_exit_logits(
    model: MultiExit, encoded: D.Encoded, batch_size: int = 64, buckets=None
) -> np.ndarray:
    """[x n c] float32 logits of every exit over a whole dataset, in its order: the input of
    `fit_exit_temperatures`, `calibrate_exits` and `simulate_exits`."""
    feats, last_cls = collect_features(model, encoded, batch_size, buckets)
    logits = model.logits_from_features(jnp.asarray(feats), jnp.asarray(last_cls))
    return np.asarray(logits, np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExitTrainConfig:
    """Stage-2 (frozen backbone) training of the exit heads.

    Attributes:
      epochs: passes over the [CLS] vectors.
      batch_size: examples per step.
      learning_rate: AdamW peak rate (linear decay to 0).
      weight_decay: AdamW weight decay.
      weighting: weights of the intermediate exits' losses (DeeBERT: uniform).
      seed: shuffling seed.
    """

    epochs: float = 3.0
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    weighting: LossWeighting | str = LossWeighting.UNIFORM
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "weighting", LossWeighting(self.weighting))
        if not self.epochs > 0 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError(
                f"epochs, batch_size and learning_rate must be positive, got {self.epochs}, "
                f"{self.batch_size}, {self.learning_rate}"
            )


def train_exit_heads(
    model: MultiExit, features: np.ndarray, labels: np.ndarray, config: ExitTrainConfig
) -> list[float]:
    """DeeBERT stage 2: trains the intermediate heads (and the mix) on frozen features
    (`collect_features`). The backbone and the final head do not change. Returns the loss
    of every step.
    """
    feats = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int32)
    if feats.ndim != 3 or feats.shape[0] != labels.shape[0]:
        raise ValueError(f"features must be [n, l+1, d] with n = len(labels), got {feats.shape}")
    if model.num_exits < 2:
        return []
    trainable = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("heads"), nnx.PathContains("mix")))
    graphdef, params, rest = nnx.split(model, trainable, ...)
    n = len(labels)
    steps = max(1, int(config.epochs * n / config.batch_size))
    sched = optax.linear_schedule(config.learning_rate, 0.0, steps)
    tx = optax.adamw(sched, weight_decay=config.weight_decay)
    opt_state = tx.init(params)
    inner = model.exit_layers[:-1]

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(params):
            me = nnx.merge(graphdef, params, rest)
            logits = jnp.stack([me.exit_logits(k, x) for k in range(len(inner))])
            return joint_loss(logits, y, inner, config.weighting)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(config.seed)
    losses, order = [], np.empty(0, np.int64)
    for _ in range(steps):
        if len(order) < config.batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        take, order = order[: config.batch_size], order[config.batch_size :]
        params, opt_state, loss = step(params, opt_state, feats[take], labels[take])
        losses.append(float(loss))
    nnx.update(model, params)
    return losses


def train_frozen_exits(
    model: MultiExit,
    fit: D.Encoded,
    config: ExitTrainConfig | None = None,
    batch_size: int = 64,
    buckets=None,
) -> list[float]:
    """DeeBERT's second stage end to end: the frozen backbone's features of the labelled
    `fit` set (`collect_features`), then the heads trained on them (`train_exit_heads`).
    Returns the loss of every step."""
    if fit.labels is None:
        raise ValueError("exit heads train on labelled examples: fit has no labels")
    feats, _ = collect_features(model, fit, batch_size, buckets)
    return train_exit_heads(model, feats, fit.labels, config or ExitTrainConfig())


class ExitHeads(nnx.Module):
    """The trainable part of a MultiExit (heads and mix), for saving and loading it apart
    from the backbone it was trained on."""

    def __init__(self, model: MultiExit):
        self.heads = model.heads
        self.mix = model.mix


def fit_exit_temperatures(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[e] temperature of each exit, fitted by NLL on a calibration split."""
    logits = np.asarray(logits, np.float32)
    return np.array([fit_temperature(logits[k], labels) for k in range(logits.shape[0])])
