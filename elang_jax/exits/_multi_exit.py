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
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from elang_jax.core import (
    StackState,
    TokenSelector,
    compact_apply,
    full_counts,
    run_stack,
)
from elang_jax.engine import (
    CompiledStep,
    StepEngine,
    step_count,
    step_threshold,
    step_valid,
)
from elang_jax.exits._config import ExitPolicy, MultiExitConfig
from elang_jax.models import BertForSequenceClassification, step_inputs
from elang_jax.routing import score


class ExitTemperature(nnx.Variable):
    """Per-exit softmax temperatures (set by calibration, not trained by gradient)."""


@dataclasses.dataclass(frozen=True)
class MultiExitOutput:
    """Every exit's logits for a batch (training and offline analysis).

    Attributes:
      logits: [x b c] float32, exit k's logits (the last is the model's own head).
      features: [b l+1 d] what the heads read from the embeddings and every layer: the
        [CLS] vector or the mean over real tokens (`MultiExitConfig.pooling`).
      last_cls: [b d] the final layer's [CLS] vector (the model's own head reads it).
    """

    logits: Float[Array, "x b c"]
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
      buckets_used: [shards x] rows each segment (the layers up to an exit) ran on, per
        data shard (one row without a mesh); 0 where a segment was skipped.
    """

    predictions: Int[Array, " b"]
    exit_index: Int[Array, " b"]
    layers: Int[Array, " b"]
    logits: Float[Array, "b c"]
    scores: Float[Array, " b"]
    buckets_used: Int[Array, "shards x"]


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
        self._steps = _StepCache()

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
    ) -> Float[Array, "x b c"]:
        """Every exit's logits from precomputed features (two-stage exit training)."""
        # [b d] -> [b 1 d]: the head reads token 0 only.
        last = last_cls[:, None]
        return jnp.stack([self.exit_logits(k, feats, last) for k in range(self.num_exits)])

    # ------------------------------------------------------------------ full pass
    def __call__(
        self,
        # [b t] each; any array: `check_inputs` reports wrong shapes and dtypes by name.
        input_ids: ArrayLike,
        attention_mask: ArrayLike | None = None,
        token_type_ids: ArrayLike | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> MultiExitOutput:
        """Runs every layer and every exit (training, calibration, analysis)."""
        enc = self.model.encoder
        enc.check_inputs(input_ids, attention_mask, token_type_ids)
        # Host (numpy) inputs become device arrays here, once, for the layers below.
        input_ids = jnp.asarray(input_ids)
        attention_mask = None if attention_mask is None else jnp.asarray(attention_mask)
        token_type_ids = None if token_type_ids is None else jnp.asarray(token_type_ids)
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
    def exit_step(
        self,
        batch_size: int,
        policy: ExitPolicy | str | None = None,
        *,
        mesh: Mesh | None = None,
        bucket_fractions: Sequence[float] | None = None,
    ) -> CompiledStep:
        """The compiled `step(inputs, valid=None, threshold=None, patience=None)`, returning
        an `ExitStepOutput`.

        `inputs` holds input_ids, attention_mask and token_type_ids ([b t] int32); `valid`
        [b] marks real rows (padding rows run no layer and report layers = 0). `threshold`
        (float) and `patience` (int) default to the config's and may change between calls
        without recompiling. `policy` overrides the config's. Steps are cached per batch
        size and policy; each reads the module's current parameters, temperatures and
        structure on every call. With a `mesh`, the rows are split over its "data" (and
        "expert") axes and each shard packs its own rows after each exit
        (`elang_jax.engine.DataParallel`). `bucket_fractions` overrides the config's (e.g.
        ones fitted to a calibration split, `elang_jax.core.fitted_fractions`).
        """
        policy = ExitPolicy(self.config.policy if policy is None else policy)
        fractions = self.config.bucket_fractions
        if bucket_fractions is not None:  # validated as the config's are
            fractions = dataclasses.replace(
                self.config, bucket_fractions=tuple(float(f) for f in bucket_fractions)
            ).bucket_fractions
        engines = self._steps.engines.setdefault(self, {})
        key = (policy, fractions)
        if key not in engines:
            engines[key] = StepEngine(_ExitProgram(self, policy), fractions)
        return engines[key].step(batch_size, mesh)


_EngineKey = tuple[ExitPolicy, tuple[float, ...]]


class _StepCache:
    """The compiled exit steps of a module, per module object.

    A static attribute of the module (not state): `nnx.clone` and `nnx.merge` share it, so it
    is keyed by the module itself, and a clone builds its own steps. The steps refer back to
    their module, a cycle that the garbage collector frees with the module.
    """

    def __init__(self):
        # module -> (policy, bucket fractions) -> its engine.
        self.engines: weakref.WeakKeyDictionary[MultiExit, dict[_EngineKey, StepEngine]] = (
            weakref.WeakKeyDictionary()
        )


class _ExitProgram:
    """The exit step as a step-engine program: one tier with exits."""

    def __init__(self, module: MultiExit, policy: ExitPolicy):
        self.module = module
        self.policy = policy

    def structure(self):
        return [self.module], self.policy

    def prepare(self, batch_size, inputs, valid=None, threshold=None, patience=None):
        me = self.module
        full = step_inputs(inputs, batch_size, [me.model.encoder])
        params = dict(
            threshold=jnp.asarray(step_threshold("threshold", threshold, me.config.threshold)),
            patience=jnp.asarray(step_count("patience", patience, me.config.patience)),
        )
        return full, step_valid(valid, batch_size), params

    def run(self, static, modules, inputs, valid, params, buckets):
        (me,) = modules
        out = exit_loop(me, inputs, valid, static, params["threshold"], params["patience"], buckets)
        return ExitStepOutput(**out)


# ---------------------------------------------------------------------------------------------
# The exit loop, shared with composed systems (`elang_jax.compose`), which also prune tokens


def _start(me: MultiExit, inputs: dict[str, Array]) -> tuple[StackState, Array]:
    """Per-example state before layer 1: the tokens, and the feature history [b l+1 d]
    holding the embeddings' features."""
    enc = me.model.encoder
    h = enc.embed(inputs["input_ids"], inputs["token_type_ids"])
    state = StackState.start(h, inputs["attention_mask"])
    feats = jnp.zeros((h.shape[0], len(enc.layers) + 1, h.shape[2]), h.dtype)
    feats = feats.at[:, 0].set(pool_features(h, state.mask, me.config.pooling))
    return state, feats


def _run_layers(
    me: MultiExit,
    state: StackState,
    feats: Array,
    start: int,
    stop: int,
    counts: tuple[int, ...],
    selector: TokenSelector | None,
) -> tuple[StackState, Array]:
    """Layers [start, stop) through the shared runner, each layer's pooled features written
    into the history `feats`."""
    pooling = me.config.pooling

    def record(i, state, feats):
        return feats.at[:, i + 1].set(pool_features(state.h, state.mask, pooling))

    return run_stack(
        me.model.encoder.layer_fn(), state, start, stop, counts, selector, record, feats
    )


def _counts(me: MultiExit, t: int, selector: TokenSelector | None) -> tuple[int, ...]:
    num_layers = len(me.model.encoder.layers)
    if selector is None:
        return full_counts(num_layers, t)
    counts = selector.counts(t)
    if len(counts) != num_layers:
        raise ValueError(f"the schedule is for {len(counts)} layers, the model has {num_layers}")
    return counts


def all_exit_logits(
    me: MultiExit, inputs: dict[str, Array], selector: TokenSelector | None = None
) -> Float[Array, "x b c"]:
    """Every exit's logits when no example leaves (traced), optionally with a token
    selector (ACC): the offline input of exit calibration for a pruned multi-exit model."""
    state, feats = _start(me, inputs)
    counts = _counts(me, state.h.shape[1], selector)
    logits, start = [], 0
    for k, stop in enumerate(me.exit_layers):
        state, feats = _run_layers(me, state, feats, start, stop, counts, selector)
        logits.append(me.exit_logits(k, feats, state.h))
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
    selector: TokenSelector | None = None,
) -> dict[str, Array]:
    """The batched early-exit computation (traced; see `MultiExit.exit_step`), optionally
    with a token selector (ACC) between layers.

    After each exit the examples still running are packed into the smallest of `buckets`
    (sizes for this batch) that holds them. Returns the fields of `ExitStepOutput`.
    """
    temps = me.temperatures.value
    state, feats = _start(me, inputs)
    b, t, d = state.h.shape
    counts = _counts(me, t, selector)
    exits = me.exit_layers
    last = len(exits) - 1
    # A pytree of a StackState and per-row arrays.
    carry: dict[str, Any] = dict(
        state=state,
        feats=feats,
        done=~valid,
        predictions=jnp.zeros((b,), jnp.int32),
        exit_index=jnp.zeros((b,), jnp.int32),
        logits=jnp.zeros((b, me.model.config.num_labels), jnp.float32),
        scores=jnp.zeros((b,), jnp.float32),
        agree=jnp.zeros((b,), jnp.int32),
    )
    start = 0
    used = []
    for k, stop in enumerate(exits):

        def segment(rows, row_valid, k=k, start=start, stop=stop):
            state, feats = _run_layers(
                me, rows["state"], rows["feats"], start, stop, counts, selector
            )
            logits = me.exit_logits(k, feats, state.h)
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
                state=state,
                feats=feats,
                done=leave,
                predictions=pred,
                exit_index=jnp.full_like(pred, k),
                logits=logits,
                scores=conf,
                agree=agree.astype(jnp.int32),
            )

        # Rows that already left keep their answers; their tokens are dropped (zeros of the
        # shapes this segment leaves behind, which pruning may have narrowed).
        default = dict(carry, state=StackState.zeros(b, counts[stop - 1], d, state.h.dtype))
        carry, packing = compact_apply(segment, ~carry["done"], carry, default, buckets)
        used.append(jnp.asarray(buckets, jnp.int32)[packing.bucket])
        start = stop
    layers = jnp.asarray(exits, jnp.int32)[carry["exit_index"]]
    return dict(
        predictions=carry["predictions"],
        exit_index=carry["exit_index"],
        layers=jnp.where(valid, layers, 0),
        logits=carry["logits"],
        scores=carry["scores"],
        # [1 x]
        buckets_used=jnp.stack(used)[None],
    )
