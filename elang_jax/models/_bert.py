"""BERT-family encoders (BERT, RoBERTa, MiniLM, MPNet) in Flax NNX, with their heads.

The backbone exposes what the adaptive-compute methods need:
  * `embed` then `run_layers(h, mask, start, stop, positions=...)`: run any range of layers,
    on any subset of tokens (absolute positions are added at the embedding; MPNet's relative
    position bias is computed from `positions`, each token's original column, so a gathered
    subset of hidden states with its mask and positions is a valid input to any later layer);
  * per-layer hidden states and attention probabilities on request;
  * `layer.ffn`, a pluggable feed-forward module (MoE layers replace it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Float, Int

from elang_jax.core import LayerFn, StackState
from elang_jax.models._bert_config import (
    MPNET_RELATIVE_MAX_DISTANCE,
    BertConfig,
    PositionStyle,
)
from elang_jax.models._common import (
    FeedForward,
    MultiHeadAttention,
    activation_fn,
    check_length,
    check_mask,
    check_token_ids,
    dropout,
    is_concrete,
    mask_to_bias,
)
from elang_jax.models._outputs import ClassifierOutput, EncoderOutput, LMOutput
from elang_jax.models._t5_layers import RelativePositionBias


def _layer_norm(config: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        config.hidden_size, epsilon=config.layer_norm_eps, dtype=config.dtype, rngs=rngs
    )


class BertEmbeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        d = config.hidden_size
        self.word = nnx.Embed(config.vocab_size, d, dtype=config.dtype, rngs=rngs)
        self.position = nnx.Embed(config.max_position_embeddings, d, dtype=config.dtype, rngs=rngs)
        self.token_type = (
            nnx.Embed(config.type_vocab_size, d, dtype=config.dtype, rngs=rngs)
            if config.type_vocab_size
            else None
        )
        self.norm = _layer_norm(config, rngs)
        self.config = config

    def position_ids(self, input_ids: Int[Array, "b t"]) -> Int[Array, "b t"]:
        t = input_ids.shape[1]
        if self.config.position_style is PositionStyle.ROBERTA:
            # Same rule as Hugging Face: padding tokens sit at pad_token_id, real tokens count
            # up from pad_token_id + 1.
            not_pad = (input_ids != self.config.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(not_pad, axis=1) * not_pad + self.config.pad_token_id
        return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), input_ids.shape)

    def __call__(
        self,
        input_ids: Int[Array, "b t"],
        token_type_ids: Int[Array, "b t"] | None = None,
        position_ids: Int[Array, "b t"] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> Float[Array, "b t d"]:
        if position_ids is None:
            position_ids = self.position_ids(input_ids)
        h = self.word(input_ids) + self.position(position_ids)
        # Without a table (MPNet) token_type_ids can only be zeros: `check_inputs` refuses
        # others whenever they are concrete.
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            h = h + self.token_type(token_type_ids)
        return dropout(self.norm(h), self.config.hidden_dropout, rngs)


class BertLayer(nnx.Module):
    """Post-norm transformer layer: h = LN(h + Attn(h)); h = LN(h + FFN(h))."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.attention = MultiHeadAttention(
            config.hidden_size,
            config.num_heads,
            config.head_dim,
            use_bias=True,
            scale=1.0 / math.sqrt(config.head_dim),
            dtype=config.dtype,
            rngs=rngs,
        )
        self.attention_norm = _layer_norm(config, rngs)
        self.ffn = FeedForward(
            config.hidden_size,
            config.intermediate_size,
            activation=config.hidden_act,
            dtype=config.dtype,
            rngs=rngs,
        )
        self.ffn_norm = _layer_norm(config, rngs)
        self.hidden_dropout = config.hidden_dropout
        self.attention_dropout = config.attention_dropout

    def __call__(
        self,
        h: Float[Array, "b t d"],
        bias: Float[Array, "#b #h #t t"] | None,
        *,
        return_probs: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> tuple[Float[Array, "b t d"], Float[Array, "b h t t"] | None]:
        # Attention-probability dropout is folded into the output dropout: HF drops the
        # probabilities themselves; the difference only matters in training.
        attn, probs = self.attention(h, bias, return_probs=return_probs)
        h = self.attention_norm(h + dropout(attn, self.hidden_dropout, rngs))
        h = self.ffn_norm(h + dropout(self.ffn(h), self.hidden_dropout, rngs))
        return h, probs


class BertModel(nnx.Module):
    """The encoder backbone: embeddings, a stack of `BertLayer`s, an optional pooler."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.layers = nnx.List([BertLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        # MPNet: one [buckets, h] table owned by the encoder, its bias added to every layer's
        # attention logits (transformers' MPNetEncoder.relative_attention_bias). The bucket
        # rule is T5's bidirectional one.
        self.relative_bias = (
            RelativePositionBias(
                config.relative_attention_num_buckets,
                config.num_heads,
                MPNET_RELATIVE_MAX_DISTANCE,
                bidirectional=True,
                rngs=rngs,
            )
            if config.relative_attention_num_buckets
            else None
        )
        self.pooler = (
            nnx.Linear(config.hidden_size, config.hidden_size, dtype=config.dtype, rngs=rngs)
            if config.add_pooler
            else None
        )

    def check_inputs(
        self,
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        token_type_ids: ArrayLike | None = None,
    ) -> None:
        """Shape, dtype and (for concrete arrays) value checks with messages that name them.

        Takes any array: wrong shapes and dtypes are what it reports ([b t] integer ids, a
        [b t] mask of 0 and 1)."""
        check_token_ids(input_ids, self.config.vocab_size)
        shape = np.shape(input_ids)
        check_length(shape[1], self.config.max_length)
        if attention_mask is not None:
            check_mask(attention_mask, shape)
        if token_type_ids is not None:
            check_mask(token_type_ids, shape, "token_type_ids", binary=False)
            if self.config.type_vocab_size:
                check_token_ids(token_type_ids, self.config.type_vocab_size, "token_type_ids")
            elif is_concrete(token_type_ids) and np.any(np.asarray(token_type_ids) != 0):
                raise ValueError(
                    f"this {self.config.model_type} model has no token-type embeddings: "
                    "token_type_ids must be None or all zeros"
                )

    def embed(
        self,
        input_ids: Int[Array, "b t"],
        token_type_ids: Int[Array, "b t"] | None = None,
        position_ids: Int[Array, "b t"] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> Float[Array, "b t d"]:
        return self.embeddings(input_ids, token_type_ids, position_ids, rngs=rngs)

    def attention_bias(
        self,
        attention_mask: Int[Array, "b t"] | None,
        positions: Int[Array, "b t"] | None,
        length: int,
    ) -> Float[Array, "#b #h #t t"] | None:
        """What every layer adds to its attention logits: the padding mask, plus MPNet's
        relative position bias of the tokens' original columns `positions`."""
        if self.relative_bias is None:
            return None if attention_mask is None else mask_to_bias(attention_mask, jnp.float32)
        return self.relative_bias.self_attention_bias(attention_mask, positions, length)

    def run_layers(
        self,
        h: Float[Array, "b t d"],
        attention_mask: Int[Array, "b t"] | None,
        start: int = 0,
        stop: int | None = None,
        *,
        positions: Int[Array, "b t"] | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> EncoderOutput:
        """Runs layers [start, stop) on hidden states `h` (any subset of a sequence's tokens).

        `positions` [b t] are the tokens' original columns (default 0..t-1); only MPNet's
        relative bias reads them, so a gathered subset needs them there. `hidden_states`, when
        asked for, holds the input `h` followed by each layer's output.
        """
        stop = len(self.layers) if stop is None else stop
        if not 0 <= start <= stop <= len(self.layers):
            raise ValueError(f"layer range [{start}, {stop}) is outside [0, {len(self.layers)}]")
        bias = self.attention_bias(attention_mask, positions, h.shape[1])
        hiddens, attns = [h], []
        for layer in self.layers[start:stop]:
            h, probs = layer(h, bias, return_probs=output_attentions, rngs=rngs)
            hiddens.append(h)
            attns.append(probs)
        return EncoderOutput(
            last_hidden_state=h,
            hidden_states=tuple(hiddens) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
        )

    def layer_fn(self, *, rngs: nnx.Rngs | None = None) -> LayerFn:
        """This stack as the layer-stack runner's `LayerFn` (`elang_jax.core.run_stack`)."""

        def run(i: int, state: StackState, want_probs: bool, want_values: bool):
            values = self.layers[i].attention.values(state.h) if want_values else None
            out = self.run_layers(
                state.h,
                state.mask,
                i,
                i + 1,
                positions=state.positions,
                output_attentions=want_probs,
                rngs=rngs,
            )
            probs = out.attentions[0] if out.attentions is not None else None
            return out.last_hidden_state, probs, values

        return run

    def pool(self, h: Float[Array, "b t d"]) -> Float[Array, "b d"]:
        if self.pooler is None:
            raise ValueError("this model was built without a pooler (add_pooler=False)")
        return jnp.tanh(self.pooler(h[:, 0]))

    def __call__(
        self,
        # [b t] each; any array: `check_inputs` reports wrong shapes and dtypes by name.
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        token_type_ids: ArrayLike | None = None,
        position_ids: ArrayLike | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> EncoderOutput:
        self.check_inputs(input_ids, attention_mask, token_type_ids)
        # Host (numpy) inputs become device arrays here, once, for the layers below.
        input_ids = jnp.asarray(input_ids)
        attention_mask = None if attention_mask is None else jnp.asarray(attention_mask)
        token_type_ids = None if token_type_ids is None else jnp.asarray(token_type_ids)
        position_ids = None if position_ids is None else jnp.asarray(position_ids)
        h = self.embed(input_ids, token_type_ids, position_ids, rngs=rngs)
        out = self.run_layers(
            h,
            attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        if self.pooler is not None:
            out = dataclasses.replace(out, pooled=self.pool(out.last_hidden_state))
        return out


class ClassificationHead(nnx.Module):
    """Maps the [b t d] final hidden states to [b c] logits.

    BERT: pooler (tanh dense on token 0) then a linear classifier; the pooler belongs to the
    backbone. RoBERTa and MPNet: their own dense + tanh + out_proj on token 0, no pooler.
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        d, c = config.hidden_size, config.num_labels
        self.roberta_style = config.roberta_style_heads
        self.dense = nnx.Linear(d, d, dtype=config.dtype, rngs=rngs) if self.roberta_style else None
        self.out = nnx.Linear(d, c, dtype=config.dtype, rngs=rngs)
        rate = config.classifier_dropout
        self.dropout = config.hidden_dropout if rate is None else rate

    def __call__(
        self, h: Float[Array, "b t d"], backbone: BertModel, *, rngs: nnx.Rngs | None = None
    ) -> Float[Array, "b c"]:
        if self.dense is not None:
            x = dropout(h[:, 0], self.dropout, rngs)
            x = jnp.tanh(self.dense(x))
        else:
            x = backbone.pool(h)
        return self.out(dropout(x, self.dropout, rngs)).astype(jnp.float32)


class BertForSequenceClassification(nnx.Module):
    """Encoder plus classification head (the BertForSequenceClassification,
    RobertaForSequenceClassification or MPNetForSequenceClassification layouts)."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        if config.roberta_style_heads and config.add_pooler:
            config = config.replace(add_pooler=False)
        if config.model_type == "bert" and not config.add_pooler:
            raise ValueError("BERT sequence classification needs the pooler (add_pooler=True)")
        self.config = config
        self.encoder = BertModel(config, rngs=rngs)
        self.head = ClassificationHead(config, rngs=rngs)

    def classify(
        self, h: Float[Array, "b t d"], *, rngs: nnx.Rngs | None = None
    ) -> Float[Array, "b c"]:
        """Logits from any layer's hidden states (used by exits and cascades)."""
        return self.head(h, self.encoder, rngs=rngs)

    def __call__(
        self,
        # [b t] each; any array: `check_inputs` reports wrong shapes and dtypes by name.
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        token_type_ids: ArrayLike | None = None,
        position_ids: ArrayLike | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> ClassifierOutput:
        enc = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        logits = self.classify(enc.last_hidden_state, rngs=rngs)
        return ClassifierOutput(logits=logits, encoder=enc)


class BertForMaskedLM(nnx.Module):
    """Encoder plus masked-LM head; the decoder matrix is tied to the word embeddings."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        config = config.replace(add_pooler=False)
        self.config = config
        self.encoder = BertModel(config, rngs=rngs)
        d = config.hidden_size
        self.transform = nnx.Linear(d, d, dtype=config.dtype, rngs=rngs)
        self.transform_norm = _layer_norm(config, rngs)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))

    def __call__(
        self,
        # [b t] each; any array: `check_inputs` reports wrong shapes and dtypes by name.
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        token_type_ids: ArrayLike | None = None,
        position_ids: ArrayLike | None = None,
        *,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> LMOutput:
        enc = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            rngs=rngs,
        )
        # RoBERTa's and MPNet's LM heads apply GELU whatever `hidden_act`; BERT's follows it.
        act = "gelu" if self.config.roberta_style_heads else self.config.hidden_act
        x = activation_fn(act)(self.transform(enc.last_hidden_state))
        x = self.transform_norm(x)
        # [b t d] x [v d] -> [b t v], plus the bias [v] -> [1 1 v]
        logits = self.encoder.embeddings.word.attend(x) + self.bias[...][None, None, :]
        return LMOutput(
            logits=logits.astype(jnp.float32),
            hidden_states=enc.hidden_states,
            attentions=enc.attentions,
        )


def num_parameters(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def step_inputs(
    inputs: Mapping[str, ArrayLike],
    batch_size: int | None = None,
    encoders: Sequence[BertModel] = (),
) -> dict[str, Int[Array, "b t"]]:
    """The three [b t] int32 inputs of a BERT-family forward from a dict holding at least
    input_ids (attention_mask defaults to all ones, token_type_ids to zeros), as the
    compiled steps take them.

    Args:
      inputs: input_ids [b t] and optionally attention_mask, token_type_ids.
      batch_size: the rows the step was built for, checked when given.
      encoders: whose `check_inputs` the inputs must pass, as given (dtypes, ranges),
        before they are cast to int32.
    """
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a dict of arrays, got {type(inputs).__name__}")
    unknown = sorted(set(inputs) - {"input_ids", "attention_mask", "token_type_ids"})
    if "input_ids" not in inputs or unknown:
        raise ValueError(
            "inputs must hold input_ids and optionally attention_mask, token_type_ids; got "
            f"keys {sorted(inputs)}"
        )
    ids = jnp.asarray(inputs["input_ids"])
    if ids.ndim != 2 or (batch_size is not None and ids.shape[0] != batch_size):
        if batch_size is None:
            raise ValueError(f"input_ids must have shape [b, t], got {ids.shape}")
        raise ValueError(
            f"input_ids must have shape [{batch_size}, t] (this step was built for batch "
            f"{batch_size}), got {ids.shape}"
        )
    for encoder in encoders:
        encoder.check_inputs(  # as given: numpy or jax arrays
            inputs["input_ids"],  # pyright: ignore[reportArgumentType]
            inputs.get("attention_mask"),  # pyright: ignore[reportArgumentType]
            inputs.get("token_type_ids"),  # pyright: ignore[reportArgumentType]
        )
    mask = inputs.get("attention_mask")
    types = inputs.get("token_type_ids")
    return dict(
        input_ids=ids.astype(jnp.int32),
        # != 0, as the plain forward's `mask_to_bias` reads a mask.
        attention_mask=jnp.ones_like(ids, jnp.int32)
        if mask is None
        else (jnp.asarray(mask) != 0).astype(jnp.int32),
        token_type_ids=jnp.zeros_like(ids, jnp.int32)
        if types is None
        else jnp.asarray(types, jnp.int32),
    )
