"""ACC token pruning in encoders: BERT-family classifiers and the T5 encoder.

Both run their stack through the shared layer-stack runner (`elang_jax.core.run_stack`) with
ACC as its token selector: after a layer whose successor keeps fewer tokens, the layer's
attention probabilities give the ACC scores, and before the next layer `select_tokens` picks
the columns and `gather_tokens` takes them (hidden states, mask, original positions). The
backbone's `run_layers` accepts any subset of a sequence's tokens (BERT adds positions at the
embedding; T5 computes its relative bias from the `positions` passed along).

Shape names: b batch, t padded length, n tokens kept after the last selection, d width,
c classes.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int

from elang_jax.core import LayerFn, StackState, run_stack
from elang_jax.models import BertForSequenceClassification, T5ForConditionalGeneration
from elang_jax.pruning._schedule import KeepSchedule
from elang_jax.pruning._selector import AccSelector


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
    layer_fn: LayerFn, h: Float[Array, "b t d"], mask: Int[Array, "b t"], schedule: KeepSchedule
) -> tuple[StackState, tuple[int, ...]]:
    """The whole stack through the shared runner, ACC selecting tokens between layers."""
    counts = schedule.counts(mask.shape[1])
    state, _ = run_stack(
        layer_fn, StackState.start(h, mask), 0, len(counts), counts, AccSelector(schedule)
    )
    return state, counts


def acc_classify(
    model: BertForSequenceClassification,
    # [b t] each; any array: `check_inputs` reports wrong shapes and dtypes by name.
    input_ids: ArrayLike,
    attention_mask: ArrayLike,
    token_type_ids: ArrayLike | None,
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
    # Host (numpy) inputs become device arrays here, once, for the layers below.
    input_ids, attention_mask = jnp.asarray(input_ids), jnp.asarray(attention_mask)
    token_type_ids = None if token_type_ids is None else jnp.asarray(token_type_ids)
    h = encoder.embed(input_ids, token_type_ids, rngs=rngs)

    state, counts = _prune_stack(encoder.layer_fn(rngs=rngs), h, attention_mask, schedule)
    logits = model.classify(state.h, rngs=rngs)
    return PrunedOutput(
        last_hidden_state=state.h,
        attention_mask=state.mask,
        positions=state.positions,
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

    state, counts = _prune_stack(encoder.layer_fn(rngs=rngs), h, attention_mask, schedule)
    return PrunedOutput(
        last_hidden_state=encoder.finish(state.h, rngs=rngs),
        attention_mask=state.mask,
        positions=state.positions,
        counts=counts,
    )
