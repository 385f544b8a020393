"""ACC token pruning in encoders: BERT-family classifiers and the T5 encoder.

Both run their stack one layer at a time through the backbone's `run_layers`, which accepts
any subset of a sequence's tokens (BERT adds positions at the embedding; T5 computes its
relative bias from the `positions` passed along). After a layer whose successor keeps fewer
tokens, the layer's attention probabilities give the ACC scores, `select_tokens` picks the
columns and `gather_tokens` takes them (hidden states, mask, original positions).

Shape names: b batch, t padded length, n tokens kept after the last selection, d width,
c classes.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from elang_jax.models import BertForSequenceClassification, T5ForConditionalGeneration
from elang_jax.pruning._schedule import AccVariant, KeepSchedule
from elang_jax.pruning._scores import acc_scores, gather_tokens, select_tokens


@flax.struct.dataclass
class PrunedOutput:
    """Result of a pruned encoder pass.

    Attributes:
      last_hidden_state: [b n d] the kept tokens after the last layer (T5: after the final
        norm), in their original order.
      attention_mask: [b n] 1 for the kept real tokens, 0 for kept padding.
      positions: [b n] each kept token's column in the input.
      logits: [b c] classifier logits (classifiers only).
      counts: tokens entering each layer (static).
    """

    last_hidden_state: Float[Array, "b n d"]
    attention_mask: Int[Array, "b n"]
    positions: Int[Array, "b n"]
    logits: Float[Array, "b c"] | None = None
    counts: tuple[int, ...] = flax.struct.field(pytree_node=False, default=())


def _check(schedule: KeepSchedule, num_layers: int) -> None:
    if schedule.num_layers != num_layers:
        raise ValueError(
            f"the schedule is for {schedule.num_layers} layers, the model has {num_layers}"
        )


def _prune_stack(
    run_layer,
    value_fn,
    h: Float[Array, "b t d"],
    mask: Int[Array, "b t"],
    schedule: KeepSchedule,
    rngs: nnx.Rngs | None,
):
    """The shared layer loop. `run_layer(i, h, mask, positions, want_probs)` runs layer i and
    returns (h, probs or None); `value_fn(i, h)` returns the layer's [b t h k] values."""
    b, t = mask.shape
    counts = schedule.counts(t)
    cfg = schedule.config
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = mask.astype(jnp.int32)
    scores = None  # set by the layer before every selection
    for i, n in enumerate(counts):
        if n < h.shape[1]:
            columns = select_tokens(
                scores, n, mask, keep_first=cfg.keep_first, keep_last=cfg.keep_last
            )
            h, mask, positions = gather_tokens((h, mask, positions), columns)
        selects_next = i + 1 < len(counts) and counts[i + 1] < n
        values = value_fn(i, h) if selects_next and cfg.variant is AccVariant.VALUE_NORM else None
        h, probs = run_layer(i, h, mask, positions, selects_next)
        if selects_next:
            scores = acc_scores(
                probs,
                mask,
                values=values,
                causal_positions=positions if cfg.causal else None,
            )
    return h, mask, positions, counts


def acc_classify(
    model: BertForSequenceClassification,
    input_ids: Int[Array, "b t"],
    attention_mask: Int[Array, "b t"],
    token_type_ids: Int[Array, "b t"] | None,
    schedule: KeepSchedule,
    *,
    rngs: nnx.Rngs | None = None,
) -> PrunedOutput:
    """A BERT-family classifier with ACC token pruning; trainable (pass `rngs` for dropout).

    Token 0 ([CLS]) must stay kept (`AccConfig.keep_first >= 1`): the head reads it.
    With `schedule.rate == 1.0` no token is dropped and the logits equal `model(...)`'s.
    """
    encoder = model.encoder
    _check(schedule, len(encoder.layers))
    if schedule.config.keep_first < 1:
        raise ValueError("a classifier reads token 0: use an AccConfig with keep_first >= 1")
    encoder.check_inputs(input_ids, attention_mask, token_type_ids)
    h = encoder.embed(input_ids, token_type_ids, rngs=rngs)

    def run_layer(i, h, mask, positions, want_probs):
        out = encoder.run_layers(h, mask, i, i + 1, output_attentions=want_probs, rngs=rngs)
        return out.last_hidden_state, (out.attentions[0] if want_probs else None)

    def value_fn(i, h):
        attention = encoder.layers[i].attention
        return attention._split(attention.value(h))

    h, mask, positions, counts = _prune_stack(
        run_layer, value_fn, h, attention_mask, schedule, rngs
    )
    logits = model.classify(h, rngs=rngs)
    return PrunedOutput(
        last_hidden_state=h,
        attention_mask=mask,
        positions=positions,
        logits=logits,
        counts=counts,
    )


def acc_t5_encode(
    model: T5ForConditionalGeneration,
    input_ids: Int[Array, "b t"],
    attention_mask: Int[Array, "b t"],
    schedule: KeepSchedule,
    *,
    rngs: nnx.Rngs | None = None,
) -> PrunedOutput:
    """The T5 encoder with ACC token pruning.

    The decoder cross-attends to the kept tokens only: pass `last_hidden_state` and
    `attention_mask` of the result as the encoder output and mask, e.g. to
    `elang_jax.models.t5_greedy_from_encoder`. With `schedule.rate == 1.0` the output equals
    `model.encode(...)`.
    """
    encoder = model.encoder
    _check(schedule, len(encoder.layers))
    model.check_inputs(input_ids, attention_mask)
    h = model.embed(input_ids, rngs=rngs)

    def run_layer(i, h, mask, positions, want_probs):
        out = encoder.run_layers(
            h, mask, i, i + 1, positions=positions, output_attentions=want_probs, rngs=rngs
        )
        return out.last_hidden_state, (out.attentions[0] if want_probs else None)

    def value_fn(i, h):
        layer = encoder.layers[i]
        return layer.attention._split(layer.attention.value(layer.attention_norm(h)))

    h, mask, positions, counts = _prune_stack(
        run_layer, value_fn, h, attention_mask, schedule, rngs
    )
    return PrunedOutput(
        last_hidden_state=encoder.finish(h, rngs=rngs),
        attention_mask=mask,
        positions=positions,
        counts=counts,
    )
