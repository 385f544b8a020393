"""Multi-exit encoders: exit heads on a BERT-family classifier and the batched exit step.

The batched step runs the layer stack in segments, one per exit. After each exit the
examples still running are packed into the smallest static bucket that holds them
(`compact_apply`), so the next segment costs only what those examples need; an empty bucket
skips the rest of the stack. Each example carries its own state (hidden states, [CLS]
history, PABEE counter), so its prediction and exit never depend on its batch neighbours.

The step's computation is `exit_loop`; given an ACC keep schedule it also drops tokens
between layers (each example keeps its own columns, a static number per layer), which is
how `elang_jax.compose` runs a model that exits early and prunes tokens at once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from elang_jax.core import bucket_sizes, compact_apply
from elang_jax.exits._config import ExitPolicy, MultiExitConfig
from elang_jax.models import BertForSequenceClassification, step_inputs
from elang_jax.pruning import (
    AccVariant,
    KeepSchedule,
    acc_scores,
    gather_tokens,
    select_tokens,
)
from elang_jax.routing import score


class ExitTemperature(nnx.Variable):
    """Per-exit softmax temperatures (set by calibration, not trained by gradient)."""


@dataclasses.dataclass(frozen=True)
class MultiExitOutput:
    """Every exit's logits for a batch (training and offline analysis).

    Attributes:
      logits: [e b c] float32, exit k's logits (the last is the model's own head).
      features: [b l+1 d] what the heads read from the embeddings and every layer: the
        [CLS] vector or the mean over real tokens (`MultiExitConfig.pooling`).
      last_cls: [b d] the final layer's [CLS] vector (the model's own head reads it).
    """

    logits: Float[Array, "e b c"]
    features: Float[Array, "b l1 d"]
    last_cls: Float[Array, "b d"]


@dataclasses.dataclass(frozen=True)
class ExitStepOutput:
    """What the batched exit step returns.

    Attributes:
      predictions: [b] argmax of the exit each example left at.
      exit_index: [b] index into `exit_layers` of that exit.
      layers: [b] layers run for the example (its exit layer).
      logits: [b c] float32 logits at that exit.
      scores: [b] the policy's confidence score at that exit (float32).
    """

    predictions: Int[Array, " b"]
    exit_index: Int[Array, " b"]
    layers: Int[Array, " b"]
    logits: Float[Array, "b c"]
    scores: Float[Array, " b"]


for _cls in (MultiExitOutput, ExitStepOutput):
    jax.tree_util.register_dataclass(
        _cls, data_fields=[f.name for f in dataclasses.fields(_cls)], meta_fields=[]
    )


class ExitHead(nnx.Module):
    """DeeBERT off-ramp: a tanh pooler and a linear classifier on one [CLS] vector."""

    def __init__(self, d: int, num_labels: int, *, dtype=None, rngs: nnx.Rngs):
        self.pooler = nnx.Linear(d, d, dtype=dtype, rngs=rngs)
        self.classifier = nnx.Linear(d, num_labels, dtype=dtype, rngs=rngs)

    def __call__(self, x: Float[Array, "b d"]) -> Float[Array, "b c"]:
        return self.classifier(jnp.tanh(self.pooler(x))).astype(jnp.float32)


def pool_features(
    h: Float[Array, "b t d"], mask: Int[Array, "b t"] | None, pooling: str
) -> Float[Array, "b d"]:
    """What an intermediate head reads from one layer: [CLS] or the mean over real tokens."""
    if pooling == "cls":
        return h[:, 0]
    m = jnp.ones(h.shape[:2], jnp.float32) if mask is None else mask.astype(jnp.float32)
    # [b t d] x [b t] -> [b d]: the sum over real tokens, then their count.
    total = jnp.einsum("btd,bt->bd", h.astype(jnp.float32), m)
    return (total / jnp.maximum(m.sum(-1, keepdims=True), 1.0)).astype(h.dtype)


class MultiExit(nnx.Module):
    """A BERT-family classifier with exit heads, and its batched early-exit step.

    The last exit is the model's own head, so a threshold of +inf (never exit early)
    reproduces the wrapped model: the same predictions, and logits equal up to the float
    rounding of a differently compiled program. Intermediate heads start from the final pooler
    (DeeBERT) when the model has one.

    Args:
      model: the classifier (BertForSequenceClassification, BERT or RoBERTa layout).
      config: where the exits sit and the default policy.
      rngs: initialisation of the new heads.
    """

    def __init__(
        self, model: BertForSequenceClassification, config: MultiExitConfig, *, rngs: nnx.Rngs
    ):
        if not isinstance(model, BertForSequenceClassification):
            raise TypeError(f"MultiExit wraps a BertForSequenceClassification, got {type(model)}")
        self.model = model
        self.config = config
        mc = model.config
        self.exit_layers = config.resolve_exits(mc.num_layers)
        pooler = model.encoder.pooler
        heads = []
        for _ in self.exit_layers[:-1]:
            head = ExitHead(mc.hidden_size, mc.num_labels, dtype=mc.dtype, rngs=rngs)
            if pooler is not None:
                assert pooler.bias is not None and head.pooler.bias is not None
                head.pooler.kernel.value = pooler.kernel.value
                head.pooler.bias.value = pooler.bias.value
            heads.append(head)
        self.heads = nnx.List(heads)
        n = len(self.exit_layers)
        # Mix weights: one row per intermediate exit over [embeddings, layer 1..L]; a row
        # starts one-hot on its own layer, so an untrained mix is that layer's plain feature.
        init = np.zeros((max(n - 1, 1), mc.num_layers + 1), np.float32)
        for k, layer in enumerate(self.exit_layers[:-1]):
            init[k, layer] = 1.0
        self.mix = nnx.Param(jnp.asarray(init)) if config.mix_cls else None
        self.temperatures = ExitTemperature(jnp.ones((n,), jnp.float32))

    @property
    def num_exits(self) -> int:
        return len(self.exit_layers)

    def set_temperatures(self, temperatures) -> None:
        t = np.asarray(temperatures, np.float32)
        if t.shape != (self.num_exits,) or not np.isfinite(t).all() or (t <= 0).any():
            raise ValueError(
                f"temperatures must be {self.num_exits} positive finite numbers, got {t}"
            )
        self.temperatures.value = jnp.asarray(t)

    # ------------------------------------------------------------------ heads
    def _head_input(self, k: int, feats: Float[Array, "b l1 d"]) -> Float[Array, "b d"]:
        layer = self.exit_layers[k]
        if self.mix is None:
            return feats[:, layer]
        w = self.mix.value[k, : layer + 1]
        w = w / jnp.maximum(jnp.linalg.norm(w), 1e-6)
        # [b l1 d] x [l1] -> [b d]: the mix over the layers this exit has seen.
        return jnp.einsum("bld,l->bd", feats[:, : layer + 1].astype(jnp.float32), w).astype(
            feats.dtype
        )

    def exit_logits(
        self,
        k: int,
        feats: Float[Array, "b l1 d"],
        last: Float[Array, "b t d"] | None = None,
    ) -> Float[Array, "b c"]:
        """Exit k's logits from the feature history; the final exit (the model's own head)
        reads `last`, the final layer's hidden states (its [CLS] row is enough)."""
        if k == self.num_exits - 1:
            if last is None:
                raise ValueError("the final exit needs the final layer's hidden states")
            return self.model.classify(last)
        return self.heads[k](self._head_input(k, feats))

    def logits_from_features(
        self, feats: Float[Array, "b l1 d"], last_cls: Float[Array, "b d"]
    ) -> Float[Array, "e b c"]:
        """Every exit's logits from precomputed features (two-stage exit training)."""
        # [b d] -> [b 1 d]: the head reads token 0 only.
        last = last_cls[:, None]
        return jnp.stack([self.exit_logits(k, feats, last) for k in range(self.num_exits)])

    # ------------------------------------------------------------------ full pass
    def __call__(
        self,
        input_ids: Int[Array, "b t"],
        attention_mask: Int[Array, "b t"] | None = None,
        token_type_ids: Int[Array, "b t"] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> MultiExitOutput:
        """Runs every layer and every exit (training, calibration, analysis)."""
        enc = self.model.encoder
        enc.check_inputs(input_ids, attention_mask, token_type_ids)
        h = enc.embed(input_ids, token_type_ids, rngs=rngs)
        out = enc.run_layers(h, attention_mask, output_hidden_states=True, rngs=rngs)
        pooling = self.config.pooling
        assert out.hidden_states is not None
        # L+1 hidden states [b t d] -> feature history [b l+1 d].
        feats = jnp.stack(
            [pool_features(x, attention_mask, pooling) for x in out.hidden_states], axis=1
        )
        logits = [self.heads[k](self._head_input(k, feats)) for k in range(self.num_exits - 1)]
        logits.append(self.model.classify(out.last_hidden_state, rngs=rngs))
        return MultiExitOutput(
            logits=jnp.stack(logits), features=feats, last_cls=out.last_hidden_state[:, 0]
        )

    # ------------------------------------------------------------------ batched step
    def exit_step(self, batch_size: int, policy: ExitPolicy | str | None = None):
        """A jitted `step(inputs, valid=None, threshold=None, patience=None) -> ExitStepOutput`.

        `inputs` holds input_ids, attention_mask and token_type_ids ([b t] int32); `valid`
        [b] marks real rows (padding rows run no layer and report layers = 0). `threshold`
        (float) and `patience` (int) default to the config's and may change between calls
        without recompiling. `policy` overrides the config's. Each call of `exit_step`
        compiles a new step: keep the one it returns. The step reads the module's current
        parameters and temperatures on every call.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        graphdef = nnx.graphdef(self)
        buckets = bucket_sizes(batch_size, self.config.bucket_fractions)
        policy = self.config.policy if policy is None else ExitPolicy(policy)

        @jax.jit
        def run(state, inputs, valid, threshold, patience):
            me = nnx.merge(graphdef, state)
            out = exit_loop(me, inputs, valid, policy, threshold, patience, buckets)
            return ExitStepOutput(**out)

        def step(
            inputs: Mapping[str, Array | np.ndarray],
            valid: Bool[Array, " b"] | None = None,
            threshold: float | None = None,
            patience: int | None = None,
        ) -> ExitStepOutput:
            full = step_inputs(inputs, batch_size, [self.model.encoder])
            thr = self.config.threshold if threshold is None else float(threshold)
            if math.isnan(thr):
                raise ValueError("threshold is NaN")
            pat = self.config.patience if patience is None else int(patience)
            if pat < 1:
                raise ValueError(f"patience must be >= 1, got {pat}")
            v = jnp.ones((batch_size,), bool) if valid is None else jnp.asarray(valid, bool)
            if v.shape != (batch_size,):
                raise ValueError(f"valid must have shape [{batch_size}], got {v.shape}")
            return run(
                nnx.state(self), full, v, jnp.asarray(thr, jnp.float32), jnp.asarray(pat, jnp.int32)
            )

        return step


# ---------------------------------------------------------------------------------------------
# The exit loop, shared with composed systems (`elang_jax.compose`), which also prune tokens


def _start(me: MultiExit, inputs: dict[str, Array]) -> dict[str, Array]:
    """Per-example state before layer 1: hidden states, mask, ACC scores, feature history."""
    enc = me.model.encoder
    h = enc.embed(inputs["input_ids"], inputs["token_type_ids"])
    b, t, d = h.shape
    mask = inputs["attention_mask"].astype(jnp.int32)
    feats = jnp.zeros((b, len(enc.layers) + 1, d), h.dtype)
    feats = feats.at[:, 0].set(pool_features(h, mask, me.config.pooling))
    return dict(h=h, mask=mask, acc=jnp.zeros((b, t), jnp.float32), feats=feats)


def _run_layers(
    me: MultiExit,
    rows: dict[str, Array],
    start: int,
    stop: int,
    counts: tuple[int, ...],
    schedule: KeepSchedule | None,
) -> dict[str, Array]:
    """Layers [start, stop) on `rows` (h [b n d], mask [b n], acc [b n], feats [b l1 d]).

    With a keep schedule, a layer whose count is below the tokens at hand first keeps the
    best-scored columns (ACC), and a layer whose successor keeps fewer tokens scores its
    tokens from its attention probabilities. `counts` are static, so shapes are too.
    """
    enc = me.model.encoder
    pooling = me.config.pooling
    h, mask, acc, feats = rows["h"], rows["mask"], rows["acc"], rows["feats"]
    for i in range(start, stop):
        n = counts[i]
        if n < h.shape[1]:
            assert schedule is not None
            cfg = schedule.config
            columns = select_tokens(
                acc, n, mask, keep_first=cfg.keep_first, keep_last=cfg.keep_last
            )
            h, mask = gather_tokens((h, mask), columns)
        selects_next = i + 1 < len(counts) and counts[i + 1] < n
        values = None
        by_value = schedule is not None and schedule.config.variant is AccVariant.VALUE_NORM
        if selects_next and by_value:
            attention = enc.layers[i].attention
            values = attention._split(attention.value(h))
        out = enc.run_layers(h, mask, i, i + 1, output_attentions=selects_next)
        h = out.last_hidden_state
        if selects_next:
            assert out.attentions is not None
            acc = acc_scores(out.attentions[0], mask, values=values)
        else:
            acc = jnp.zeros(h.shape[:2], jnp.float32)
        feats = feats.at[:, i + 1].set(pool_features(h, mask, pooling))
    return dict(h=h, mask=mask, acc=acc, feats=feats)


def _counts(me: MultiExit, t: int, schedule: KeepSchedule | None) -> tuple[int, ...]:
    num_layers = len(me.model.encoder.layers)
    if schedule is None:
        return (t,) * num_layers
    if schedule.num_layers != num_layers:
        raise ValueError(
            f"the schedule is for {schedule.num_layers} layers, the model has {num_layers}"
        )
    if schedule.config.keep_first < 1:
        raise ValueError("a classifier reads token 0: use an AccConfig with keep_first >= 1")
    return schedule.counts(t)


def all_exit_logits(
    me: MultiExit, inputs: dict[str, Array], schedule: KeepSchedule | None = None
) -> Float[Array, "e b c"]:
    """Every exit's logits when no example leaves (traced), optionally under ACC pruning:
    the offline input of exit calibration for a pruned multi-exit model."""
    rows = _start(me, inputs)
    counts = _counts(me, rows["h"].shape[1], schedule)
    logits, start = [], 0
    for k, stop in enumerate(me.exit_layers):
        rows = _run_layers(me, rows, start, stop, counts, schedule)
        logits.append(me.exit_logits(k, rows["feats"], rows["h"]))
        start = stop
    return jnp.stack(logits)


def exit_loop(
    me: MultiExit,
    inputs: dict[str, Array],
    valid: Bool[Array, " b"],
    policy: ExitPolicy,
    threshold: Float[Array, ""],
    patience: Int[Array, ""],
    buckets: tuple[int, ...],
    schedule: KeepSchedule | None = None,
) -> dict[str, Array]:
    """The batched early-exit computation (traced; see `MultiExit.exit_step`), optionally
    pruning tokens with ACC between layers.

    After each exit the examples still running are packed into the smallest of `buckets`
    (sizes for this batch) that holds them. Returns the fields of `ExitStepOutput`.
    """
    temps = me.temperatures.value
    rows = _start(me, inputs)
    b, t, d = rows["h"].shape
    counts = _counts(me, t, schedule)
    exits = me.exit_layers
    last = len(exits) - 1
    carry = dict(
        **rows,
        done=~valid,
        predictions=jnp.zeros((b,), jnp.int32),
        exit_index=jnp.zeros((b,), jnp.int32),
        logits=jnp.zeros((b, me.model.config.num_labels), jnp.float32),
        scores=jnp.zeros((b,), jnp.float32),
        agree=jnp.zeros((b,), jnp.int32),
    )
    start = 0
    for k, stop in enumerate(exits):

        def segment(rows, row_valid, k=k, start=start, stop=stop):
            state = _run_layers(me, rows, start, stop, counts, schedule)
            logits = me.exit_logits(k, state["feats"], state["h"])
            pred = jnp.argmax(logits, -1).astype(jnp.int32)
            conf = score(policy.score, logits, temps[k])
            agree = jnp.where((k > 0) & (pred == rows["predictions"]), rows["agree"] + 1, 0)
            if k == last:
                leave = jnp.ones_like(row_valid)
            elif policy is ExitPolicy.PATIENCE:
                leave = agree >= patience
            else:
                leave = conf >= threshold
            return dict(
                **state,
                done=leave,
                predictions=pred,
                exit_index=jnp.full_like(pred, k),
                logits=logits,
                scores=conf,
                agree=agree.astype(jnp.int32),
            )

        # Rows that already left keep their answers; their hidden states are dropped (zeros
        # of the shapes this segment leaves behind, which pruning may have narrowed).
        n = counts[stop - 1]
        default = dict(
            carry,
            h=jnp.zeros((b, n, d), carry["h"].dtype),
            mask=jnp.zeros((b, n), jnp.int32),
            acc=jnp.zeros((b, n), jnp.float32),
        )
        carry, _ = compact_apply(segment, ~carry["done"], carry, default, buckets)
        start = stop
    layers = jnp.asarray(exits, jnp.int32)[carry["exit_index"]]
    return dict(
        predictions=carry["predictions"],
        exit_index=carry["exit_index"],
        layers=jnp.where(valid, layers, 0),
        logits=carry["logits"],
        scores=carry["scores"],
    )
