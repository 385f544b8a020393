"""Training the E-LANG seq2seq router's head, and choosing its threshold.

`make_head_targets` labels each example 1 when the Swift output is good enough (matches the
Super output after EOS/pad normalisation, or a quality score reaches a threshold);
`train_energy_head` fits the `EnergyHead` on pooled Swift-encoder features with
class-balanced cross-entropy, plus (by default) a term that makes the energy itself high for
good examples (see `elang_jax.cascade._seq2seq`'s docstring for why).
`seq2seq_tier_costs` gives the analytic FLOPs of each route and
`calibrate_seq2seq_threshold` picks the threshold with the shared calibration.

Shape vocabulary: b batch rows, s source length, d model width, c head classes, n generated
tokens, m calibration examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import ArrayLike, Bool, Float, Int

from elang_jax.calibration import CalibrationTarget, OperatingPoint
from elang_jax.cascade._operating_points import calibrate_thresholds
from elang_jax.cascade._seq2seq import EnergyHead, pooled_encoder_features
from elang_jax.flops import t5_flops
from elang_jax.models._t5 import T5Config
from elang_jax.routing import Score, check_temperature, score

# ---------------------------------------------------------------------------
# Head targets and training
# ---------------------------------------------------------------------------


def normalize_tokens(
    tokens: Int[ArrayLike, "m n"], *, eos_token_id: int = 1, pad_token_id: int = 0, length=None
) -> np.ndarray:
    """Greedy outputs made comparable: everything after a row's first EOS becomes pad, then
    rows are right-padded (or cut) to `length` (default: their own width). Trailing pads
    therefore never make two outputs differ; tokens before the EOS are kept as they are."""
    t = np.asarray(tokens)
    if t.ndim != 2:
        raise ValueError(f"tokens must have shape [examples, length], got {t.shape}")
    t = t.astype(np.int64, copy=True)
    is_eos = t == eos_token_id
    # Positions strictly after the first EOS of the row.
    after = np.cumsum(is_eos, axis=1) - is_eos > 0
    t[after] = pad_token_id
    width = t.shape[1] if length is None else int(length)
    if width > t.shape[1]:
        t = np.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=pad_token_id)
    elif width < t.shape[1]:
        if (t[:, width:] != pad_token_id).any():
            raise ValueError(f"cannot cut tokens to length {width}: real tokens beyond it")
        t = t[:, :width]
    return t


def make_head_targets(
    swift_tokens: Int[ArrayLike, "m n"],
    # its own width; the same rows as swift_tokens, checked below with a message that says so
    super_tokens: Int[ArrayLike, "_ _"],
    *,
    rule: str = "match_super",
    quality_fn: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    threshold: float | None = None,
    eos_token_id: int = 1,
    pad_token_id: int = 0,
) -> np.ndarray:
    """[m] int32 head targets: 1 where the Swift output is good enough, else 0.

    Rules:
      "match_super": the Swift output equals the Super output after normalisation
        (`normalize_tokens`: pad after the first EOS, trailing pads ignored, widths may
        differ).
      "quality": `quality_fn(swift_norm, super_norm) -> [m]` (e.g. a sentence BLEU of Swift
        against Super, or against references the function closes over) is >= `threshold`.
    """
    a = np.asarray(swift_tokens)
    b = np.asarray(super_tokens)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"swift_tokens and super_tokens must be [m, n] with the same m, got {a.shape} "
            f"and {b.shape}"
        )
    width = max(a.shape[1], b.shape[1])
    kw = dict(eos_token_id=eos_token_id, pad_token_id=pad_token_id, length=width)
    a, b = normalize_tokens(a, **kw), normalize_tokens(b, **kw)
    if rule == "match_super":
        if quality_fn is not None or threshold is not None:
            raise ValueError("rule='match_super' takes no quality_fn or threshold")
        return np.all(a == b, axis=1).astype(np.int32)
    if rule == "quality":
        if quality_fn is None or threshold is None or math.isnan(float(threshold)):
            raise ValueError("rule='quality' needs quality_fn and a non-NaN threshold")
        q = np.asarray(quality_fn(a, b), np.float64)
        if q.shape != (a.shape[0],):
            raise ValueError(f"quality_fn must return shape ({a.shape[0]},), got {q.shape}")
        return (q >= float(threshold)).astype(np.int32)
    raise ValueError(f"unknown rule {rule!r}; choose 'match_super' or 'quality'")


def _class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """w_k = m / (K_present * count_k), so every present class weighs the same in total."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes, np.float64)
    w[present] = targets.size / (present.sum() * counts[present])
    return w.astype(np.float32)


def train_energy_head(
    head: EnergyHead,
    features,
    targets: Int[ArrayLike, " m"],
    *,
    steps: int = 300,
    lr: float = 1e-2,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 1e-4,
    temperature: float = 1.0,
    energy_weight: float = 1.0,
) -> tuple[EnergyHead, dict[str, np.ndarray]]:
    """Fits `head` in place with AdamW; deterministic given the head's weights and `seed`.

    Loss = class-balanced cross-entropy on the head's logits + `energy_weight` x
    class-balanced logistic loss on the energy -F = energy_score(logits, temperature) with
    the binary target "good enough" (target == num_classes - 1, i.e. class 1 for K = 2).
    The second term makes the E-LANG score itself rise with the Swift output's quality;
    set `energy_weight=0` for plain cross-entropy (e.g. when routing on max-prob).

    Args:
      head: the EnergyHead (updated in place and returned).
      features: [m d] pooled features (`pooled_encoder_features`), or a pair
        (swift, inputs dict with input_ids / attention_mask) to compute them here.
      targets: [m] int class per example (`make_head_targets` for K = 2).
      steps, lr, batch_size, seed, weight_decay: the optimisation. Minibatches are drawn
        without replacement epoch by epoch from numpy's RandomState(seed).

    Returns:
      (head, history) with history["loss"] [steps] (the minibatch loss before each update)
      and history["accuracy"] [] (argmax accuracy on all training examples at the end).
    """
    if isinstance(features, tuple):
        swift, inputs = features
        features = pooled_encoder_features(swift, inputs["input_ids"], inputs.get("attention_mask"))
    x = np.asarray(features, np.float32)
    y = np.asarray(targets)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"features must be [m, d] and targets [m], got {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("training the head needs at least one example")
    k = head.num_classes
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
        raise ValueError(f"targets must be integers in [0, {k}), got {np.unique(y)[:10]}")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(
            f"need steps >= 1, batch_size >= 1, lr > 0; got {steps=}, {batch_size=}, {lr=}"
        )
    temperature = check_temperature(temperature)
    y = y.astype(np.int32)
    m = x.shape[0]
    w_ce = jnp.asarray(_class_weights(y, k))
    good = (y == k - 1).astype(np.int32)
    w_en = jnp.asarray(_class_weights(good, 2))

    graphdef, params = nnx.split(head)
    tx = optax.adamw(lr, weight_decay=weight_decay)
    opt_state = tx.init(params)

    def loss_fn(params, xb, yb):
        logits = nnx.merge(graphdef, params)(xb)
        # Class-balanced cross-entropy.
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        wy = w_ce[yb]
        loss = jnp.sum(wy * ce) / jnp.sum(wy)
        # Class-balanced logistic loss on the energy: -F is the logit of "good enough".
        gb = (yb == k - 1).astype(jnp.int32)
        energy = score(Score.ENERGY, logits, temperature)
        bce = optax.sigmoid_binary_cross_entropy(energy, gb.astype(jnp.float32))
        wg = w_en[gb]
        return loss + energy_weight * jnp.sum(wg * bce) / jnp.sum(wg)

    @jax.jit
    def update(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.RandomState(seed)
    bs = min(batch_size, m)
    order = np.zeros(0, np.int64)
    losses = np.zeros(steps, np.float32)
    for i in range(steps):
        if order.size < bs:
            order = np.concatenate([order, rng.permutation(m)])
        idx, order = order[:bs], order[bs:]
        params, opt_state, loss = update(
            params, opt_state, jnp.asarray(x[idx]), jnp.asarray(y[idx])
        )
        losses[i] = float(loss)
    nnx.update(head, params)
    pred = np.asarray(jnp.argmax(head(jnp.asarray(x)), axis=-1))
    return head, dict(loss=losses, accuracy=np.asarray(np.mean(pred == y), np.float32))


# ---------------------------------------------------------------------------
# Costs and calibration
# ---------------------------------------------------------------------------


def seq2seq_tier_costs(
    swift: T5Config,
    super_config: T5Config,
    source_len: int,
    new_tokens: int,
    *,
    super_source_len: int | None = None,
    head: EnergyHead | None = None,
) -> np.ndarray:
    """[2] relative cost (Super encode + decode = 1) of a kept and of an escalated example.

    kept      = Swift encoder + head + Swift decoder
    escalated = Swift encoder + head + Super encoder + Super decoder
    """
    s_enc, s_dec = t5_flops(swift, source_len, new_tokens)
    p_enc, p_dec = t5_flops(
        super_config, source_len if super_source_len is None else super_source_len, new_tokens
    )
    h = 0
    if head is not None:
        width = head.d_model if head.hidden is None else head.hidden.out_features
        h = 2 * head.d_model * (0 if head.hidden is None else width) + 2 * width * head.num_classes
    full = float(p_enc + p_dec)
    return np.asarray([(s_enc + h + s_dec) / full, (s_enc + h + p_enc + p_dec) / full])


def calibrate_seq2seq_threshold(
    scores: Float[ArrayLike, " m"],
    swift_good: Bool[ArrayLike, " m"] | Int[ArrayLike, " m"],
    costs: Sequence[float] | np.ndarray,
    target: CalibrationTarget,
) -> OperatingPoint:
    """The threshold for an `ElangSeq2Seq` on a calibration split; `.setting[0]` holds it.

    Quality is relative to the Super model: the Super output counts as right on every
    example and a kept example is right when `swift_good` (e.g. `make_head_targets`), so
    `target.epsilon` bounds the share of examples whose output differs from (or is worse
    than) the Super's.

    Args:
      scores: [m] routing scores (`ElangSeq2Seq.head_scores`) on the calibration split.
      swift_good: [m] whether the Swift output is good enough on each example.
      costs: [2] or [m, 2] cost of a kept and of an escalated example
        (`seq2seq_tier_costs`).
      target: the calibration objective.
    """
    s = np.asarray(scores, np.float64)
    good = np.asarray(swift_good).astype(bool)
    if s.ndim != 1 or good.shape != s.shape:
        raise ValueError(f"scores and swift_good must be [m], got {s.shape} and {good.shape}")
    if np.isnan(s).any():
        raise ValueError("scores hold NaN")
    c = np.asarray(costs, np.float64)
    if c.shape[-1:] != (2,) or c.ndim > 2:
        raise ValueError(f"costs must be [2] or [m, 2] (kept, escalated), got {c.shape}")
    # calibrate_thresholds charges an escalated example tier 0 + tier 1: the escalated cost
    # already includes the Swift encoder and skips the Swift decoder, hence the difference.
    tier_costs = np.stack([c[..., 0], c[..., 1] - c[..., 0]], axis=-1)
    scores2 = np.stack([s, np.zeros_like(s)], axis=1)
    correct = np.stack([good, np.ones_like(good)], axis=1)
    return calibrate_thresholds(scores2, correct, tier_costs, target)
