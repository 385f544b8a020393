"""E-LANG for encoder-decoders: route on the Swift encoder, before any decoding.

The seq2seq form of E-LANG (Akbari et al., 2022): the Swift *encoder* runs on every
example; a small head h on its pooled output gives logits z; the routing score is the
negative free energy -F = T * logsumexp(z / T) (`energy_score`; the other `Score` kinds are
selectable). If -F >= t the Swift *decoder* continues from the encoder output already
computed; otherwise the whole Super model (its own encoder and decoder) runs. The decision
is taken once, before any autoregressive step, so an escalated example costs Swift encoder
+ head + Super and never any Swift decoding.

One jitted serving step does it all for a padded batch:

  Swift encoder [b] -> pool -> head -> score -> keep = score >= t (or padding row)
    |-- compact_apply(kept rows):      Swift greedy decoding from the encoder output
    '-- compact_apply(escalated rows): Super encode + greedy decoding

Both branches go through the one compaction core, so each pays only for the smallest bucket
holding its rows, and an empty bucket runs nothing. Thresholds are traced: recalibrating does
not recompile.

Training the head: `make_head_targets` labels each example 1 when the Swift output is good
enough (matches the Super output after EOS/pad normalisation, or a quality score reaches a
threshold); `train_energy_head` fits the head on pooled Swift-encoder features with
class-balanced cross-entropy, plus (by default) a term that makes the energy itself high for
good examples. Why the second term: after cross-entropy alone only logit *differences* are
trained, so the level logsumexp(z) that the energy reads is left arbitrary, and a confident
"not good" head would score as high as a confident "good" one.

Choosing t: `seq2seq_tier_costs` (analytic FLOPs per tier) and `calibrate_seq2seq_threshold`
(`calibrate_thresholds` with the Super as the reference: quality is relative to Super).

Shape vocabulary: b batch rows, s source length, d model width, c head classes (K),
n generated tokens, m calibration examples.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, ArrayLike, Float, Int

from elang_jax.core import bucket_sizes, compact_apply
from elang_jax.engine import (
    CompiledStep,
    StepEngine,
    escalate_apply,
    step_threshold,
    step_valid,
)
from elang_jax.models._t5 import T5ForConditionalGeneration, t5_greedy_from_encoder
from elang_jax.routing import Score, score

# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seq2SeqCascadeConfig:
    """How an `ElangSeq2Seq` routes and decodes.

    Attributes:
      score: routing score over the head's logits (`Score.ENERGY`: E-LANG's -F).
      threshold: keep the Swift decoder when score >= threshold. -inf keeps everything,
        +inf escalates everything (the default: Super quality until calibrated).
      temperature: energy/softmax temperature, > 0.
      max_new_tokens: greedy decoding length of both models, >= 1.
      bucket_fractions: compaction buckets as fractions of the batch (see `bucket_sizes`).
    """

    score: Score | str = Score.ENERGY  # a str is converted
    threshold: float = math.inf
    temperature: float = 1.0
    max_new_tokens: int = 20
    bucket_fractions: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 1.0)

    def __post_init__(self):
        try:
            object.__setattr__(self, "score", Score(self.score))
        except ValueError:
            raise ValueError(
                f"unknown score {self.score!r}; choose from {[s.value for s in Score]}"
            ) from None
        threshold = float(self.threshold)
        if math.isnan(threshold):
            raise ValueError(f"threshold is NaN ({self.threshold=})")
        object.__setattr__(self, "threshold", threshold)
        from elang_jax.routing import check_temperature  # kept local to this method

        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        if int(self.max_new_tokens) != self.max_new_tokens or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens=}")
        object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))
        fractions = tuple(float(f) for f in self.bucket_fractions)
        bucket_sizes(1, fractions)  # raises on a fraction outside [0, 1] or NaN
        object.__setattr__(self, "bucket_fractions", fractions)


# ---------------------------------------------------------------------------
# The head and its features
# ---------------------------------------------------------------------------


def masked_mean(
    hidden: Float[Array, "b s d"], attention_mask: Int[Array, "b s"] | None
) -> Float[Array, "b d"]:
    """Mean over the real (mask = 1) positions, in float32; an all-padding row gives 0."""
    h = hidden.astype(jnp.float32)
    if attention_mask is None:
        return h.mean(axis=1)
    # [b s 1]
    m = attention_mask.astype(jnp.float32)[..., None]
    return (h * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


class EnergyHead(nnx.Module):
    """Small head on the Swift encoder's pooled output: [b d] -> [b c] float32 logits.

    With the default c = 2, class 1 means "the Swift output is good enough" and class 0
    "escalate"; the router reads a `Score` of these logits (E-LANG: the energy).

    Example:
      head = EnergyHead(swift.config.d_model, hidden=64, rngs=nnx.Rngs(0))
      logits = head(pooled_encoder_features(swift, ids, mask))  # [b 2]
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_classes: int = 2,
        hidden: int | None = None,
        rngs: nnx.Rngs,
    ):
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1, got {d_model=}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes=}")
        if hidden is not None and hidden < 1:
            raise ValueError(f"hidden must be None or >= 1, got {hidden=}")
        self.d_model = d_model
        self.num_classes = num_classes
        self.hidden = None if hidden is None else nnx.Linear(d_model, hidden, rngs=rngs)
        self.out = nnx.Linear(d_model if hidden is None else hidden, num_classes, rngs=rngs)

    def __call__(self, features: Float[Array, "b d"]) -> Float[Array, "b c"]:
        if features.shape[-1] != self.d_model:
            raise ValueError(
                f"head features must have width {self.d_model}, got shape {features.shape}"
            )
        x = features.astype(jnp.float32)
        if self.hidden is not None:
            x = jax.nn.gelu(self.hidden(x))
        return self.out(x).astype(jnp.float32)


def pooled_encoder_features(
    swift: T5ForConditionalGeneration,
    input_ids: Int[ArrayLike, "b s"],
    attention_mask: Int[ArrayLike, "b s"] | None = None,
    *,
    batch_size: int | None = None,
) -> Float[Array, "b d"]:
    """The head's inputs: the Swift encoder's final hidden states, mean-pooled over the real
    tokens; float32 [b d]. Computed under jit, in chunks of `batch_size` rows if given."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = (
        jnp.ones(input_ids.shape, jnp.int32)
        if attention_mask is None
        else jnp.asarray(attention_mask, jnp.int32)
    )
    swift.check_inputs(input_ids, attention_mask)
    graphdef, state = nnx.split(swift)
    n = input_ids.shape[0]
    size = n if batch_size is None else int(batch_size)
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size=}")
    chunks = [
        _pooled_jit(graphdef, state, input_ids[i : i + size], attention_mask[i : i + size])
        for i in range(0, n, size)
    ]
    if not chunks:
        return jnp.zeros((0, swift.config.d_model), jnp.float32)
    return jnp.concatenate(chunks, axis=0)


@functools.partial(jax.jit, static_argnums=0)
def _pooled_jit(graphdef, state, input_ids, attention_mask):
    model = nnx.merge(graphdef, state)
    return masked_mean(model.encode(input_ids, attention_mask).last_hidden_state, attention_mask)


# ---------------------------------------------------------------------------
# The cascade
# ---------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Seq2SeqCascadeOutput:
    """Per-example results of `ElangSeq2Seq`'s serving step.

    Attributes:
      tokens: [b n] int32 greedy output of the tier that answered (pad after EOS; padding
        rows are all pad).
      tier: [b] int32, 0 = Swift decoder, 1 = Super model.
      score: [b] float32 routing score from the head.
      head_logits: [b c] float32 head logits.
      buckets_used: [shards 2] rows the Swift decoder and the Super model ran on, per data
        shard (one row without a mesh); 0 where one was skipped.
    """

    tokens: Int[Array, "b n"]
    tier: Int[Array, " b"]
    score: Float[Array, " b"]
    head_logits: Float[Array, "b c"]
    buckets_used: Int[Array, "shards 2"]


Inputs = Mapping[str, Any]


class ElangSeq2Seq:
    """E-LANG over two T5 models (see the module docstring).

    Attributes:
      swift: the small T5ForConditionalGeneration (its encoder always runs).
      super_model: the large T5ForConditionalGeneration (runs only on escalated rows).
      head: the EnergyHead on the Swift encoder's pooled output.
      config: Seq2SeqCascadeConfig.

    Example:
      cascade = ElangSeq2Seq(swift, big, head, Seq2SeqCascadeConfig(threshold=2.5))
      step = cascade.serving_step(batch_size=16)
      out = step(dict(input_ids=ids, attention_mask=mask))  # or (swift_inputs, super_inputs)
      out.tokens, out.tier, out.score
    """

    def __init__(
        self,
        swift: T5ForConditionalGeneration,
        super_model: T5ForConditionalGeneration,
        head: EnergyHead,
        config: Seq2SeqCascadeConfig | None = None,
    ):
        config = Seq2SeqCascadeConfig() if config is None else config
        for name, m in (("swift", swift), ("super_model", super_model)):
            if not isinstance(m, T5ForConditionalGeneration):
                raise TypeError(f"{name} must be a T5ForConditionalGeneration, got {type(m)}")
        if head.d_model != swift.config.d_model:
            raise ValueError(
                f"the head takes width {head.d_model} but the Swift encoder gives "
                f"{swift.config.d_model}"
            )
        a, b = swift.config, super_model.config
        if (a.pad_token_id, a.eos_token_id) != (b.pad_token_id, b.eos_token_id):
            raise ValueError(
                "Swift and Super must share pad/EOS ids so their outputs are comparable, got "
                f"(pad, eos) = {(a.pad_token_id, a.eos_token_id)} and "
                f"{(b.pad_token_id, b.eos_token_id)}"
            )
        self.swift = swift
        self.super_model = super_model
        self.head = head
        self.config = config
        self._engine = StepEngine(_Seq2SeqProgram(self), config.bucket_fractions)

    def with_threshold(self, threshold: float) -> ElangSeq2Seq:
        """The same models with a new default threshold (steps also take it per call)."""
        config = dataclasses.replace(self.config, threshold=float(threshold))
        return ElangSeq2Seq(self.swift, self.super_model, self.head, config)

    def head_scores(
        self, input_ids: Int[ArrayLike, "b s"], attention_mask: Int[ArrayLike, "b s"] | None = None
    ) -> Float[Array, " b"]:
        """The routing score from the Swift encoder and head alone (no decoding)."""
        feats = pooled_encoder_features(self.swift, input_ids, attention_mask)
        return score(self.config.score, self.head(feats), self.config.temperature)

    def serving_step(
        self, batch_size: int, *, mesh: Mesh | None = None, rebalance: bool = False
    ) -> CompiledStep:
        """The compiled `step(inputs, valid=None, threshold=None) -> Seq2SeqCascadeOutput`.

        `inputs` is one dict (input_ids, attention_mask; [b s] int32) shared by both models,
        or a pair (swift_inputs, super_inputs) when they tokenize differently (same
        examples, row for row; lengths may differ). `valid` [b] marks real rows: padding
        rows never escalate and decode nothing. `threshold` (a float) may change between
        calls without recompiling. Steps are cached per batch size, compile once per input
        lengths, and read the models, head and config as they are at every call. With a
        `mesh`, the rows are split over its "data" (and "expert") axes and each shard
        routes its own; `rebalance` deals the escalated rows out evenly over the shards
        before the Super model runs (`elang_jax.engine.DataParallel`).
        """
        return self._engine.step(batch_size, mesh, rebalance)


class _Seq2SeqProgram:
    """E-LANG seq2seq as a step-engine program (see the module docstring)."""

    def __init__(self, cascade: ElangSeq2Seq):
        self.cascade = cascade

    def structure(self):
        c = self.cascade
        cfg = c.config
        static = (cfg.score, cfg.temperature, cfg.max_new_tokens, c.swift.config.pad_token_id)
        return [c.swift, c.super_model, c.head], static

    def prepare(self, batch_size, inputs, valid=None, threshold=None):
        c = self.cascade
        swift_in, super_in = _split_inputs(inputs)
        swift_in = _prepare(c.swift, "swift", swift_in, batch_size)
        super_in = _prepare(c.super_model, "super", super_in, batch_size)
        th = jnp.asarray(step_threshold("threshold", threshold, c.config.threshold))
        return (swift_in, super_in), step_valid(valid, batch_size), th

    def run(self, static, modules, inputs, valid, threshold, buckets):
        kind, temperature, n_new, pad = static
        swift, sup, head = modules
        swift_in, super_in = inputs
        b = valid.shape[0]
        # 1. Swift encoder on the whole batch, once.
        # [b s d]
        enc = swift.encode(swift_in["input_ids"], swift_in["attention_mask"]).last_hidden_state
        # 2. Head and score: the decision is taken here, before any decoding.
        logits = head(masked_mean(enc, swift_in["attention_mask"]))
        s = score(kind, logits, temperature)
        keep = (s >= threshold) | ~valid
        tokens = jnp.full((b, n_new), pad, jnp.int32)

        # 3a. Swift decoder on the kept rows, from the encoder output computed above.
        def swift_decode(rows, row_valid):
            return t5_greedy_from_encoder(
                swift, rows["enc"], rows["mask"], max_new_tokens=n_new, done=~row_valid
            )

        tokens, swift_packing = compact_apply(
            swift_decode,
            keep & valid,
            dict(enc=enc, mask=swift_in["attention_mask"]),
            tokens,
            buckets,
        )

        # 3b. The whole Super model on the escalated rows.
        def super_generate(rows, row_valid):
            h = sup.encode(rows["input_ids"], rows["attention_mask"]).last_hidden_state
            return t5_greedy_from_encoder(
                sup, h, rows["attention_mask"], max_new_tokens=n_new, done=~row_valid
            )

        tokens, super_rows = escalate_apply(super_generate, ~keep, dict(super_in), tokens, buckets)
        swift_rows = jnp.asarray(buckets, jnp.int32)[swift_packing.bucket]
        return Seq2SeqCascadeOutput(
            tokens=tokens,
            tier=jnp.where(keep, 0, 1).astype(jnp.int32),
            score=s,
            head_logits=logits,
            # [1 2]
            buckets_used=jnp.stack([swift_rows, super_rows])[None],
        )


def _prepare(model, name: str, inputs: Inputs, batch_size: int) -> dict[str, Array]:
    if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
        keys = sorted(inputs) if isinstance(inputs, Mapping) else type(inputs).__name__
        raise ValueError(f"{name} inputs need 'input_ids', got {keys}")
    ids = jnp.asarray(inputs["input_ids"])
    if ids.ndim != 2 or ids.shape[0] != batch_size:
        raise ValueError(
            f"{name} input_ids have shape {tuple(ids.shape)}; this step was built for "
            f"batch {batch_size}"
        )
    mask = inputs.get("attention_mask")
    mask = jnp.ones(ids.shape, jnp.int32) if mask is None else jnp.asarray(mask)
    model.check_inputs(inputs["input_ids"], mask)
    # != 0, as the models' own forward reads a mask.
    return dict(input_ids=ids.astype(jnp.int32), attention_mask=(mask != 0).astype(jnp.int32))


def _split_inputs(inputs) -> tuple[Inputs, Inputs]:
    if isinstance(inputs, Mapping):
        return inputs, inputs
    inputs = list(inputs)
    if len(inputs) != 2 or not all(isinstance(x, Mapping) for x in inputs):
        raise ValueError(
            "inputs must be one dict shared by both models or a pair (swift_inputs, "
            f"super_inputs), got {len(inputs)} items"
        )
    a, b = inputs
    na, nb = np.shape(a.get("input_ids"))[:1], np.shape(b.get("input_ids"))[:1]
    if na != nb:
        raise ValueError(f"swift and super inputs have different batch sizes: {na} vs {nb}")
    return a, b
