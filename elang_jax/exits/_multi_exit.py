"""Multi-exit encoders: exit heads on a BERT-family classifier and the batched exit step.

The batched step runs the layer stack in segments, one per exit. After each exit the
examples still running are packed into the smallest static bucket that holds them
(`compact_apply`), so the next segment costs only what those examples need; an empty bucket
skips the rest of the stack. Each example carries its own state (hidden states, [CLS]
history, PABEE counter), so its prediction and exit never depend on its batch neighbours.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from elang_jax.core import bucket_sizes, compact_apply
from elang_jax.exits._config import ExitPolicy, MultiExitConfig
from elang_jax.models import BertForSequenceClassification
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
        pooling = self.config.pooling
        exits = self.exit_layers
        n = len(exits)

        @jax.jit
        def run(state, inputs, valid, threshold, patience):
            me = nnx.merge(graphdef, state)
            enc = me.model.encoder
            temps = me.temperatures.value
            h = enc.embed(inputs["input_ids"], inputs["token_type_ids"])
            b = h.shape[0]
            mask = inputs["attention_mask"]
            feats = jnp.zeros((b, len(enc.layers) + 1, h.shape[-1]), h.dtype)
            feats = feats.at[:, 0].set(pool_features(h, mask, pooling))
            carry = dict(
                h=h,
                mask=inputs["attention_mask"],
                feats=feats,
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
                    out = enc.run_layers(
                        rows["h"], rows["mask"], start, stop, output_hidden_states=True
                    )
                    hs = out.hidden_states[1:]
                    # stop - start layer outputs [b t d] -> their features [b s d].
                    new = jnp.stack([pool_features(x, rows["mask"], pooling) for x in hs], 1)
                    feats = rows["feats"].at[:, start + 1 : stop + 1].set(new)
                    logits = me.exit_logits(k, feats, out.last_hidden_state)
                    pred = jnp.argmax(logits, -1).astype(jnp.int32)
                    conf = score(policy.score, logits, temps[k])
                    agree = jnp.where((k > 0) & (pred == rows["predictions"]), rows["agree"] + 1, 0)
                    if k == n - 1:
                        leave = jnp.ones_like(row_valid)
                    elif policy is ExitPolicy.PATIENCE:
                        leave = agree >= patience
                    else:
                        leave = conf >= threshold
                    return dict(
                        h=out.last_hidden_state,
                        mask=rows["mask"],
                        feats=feats,
                        done=leave,
                        predictions=pred,
                        exit_index=jnp.full_like(pred, k),
                        logits=logits,
                        scores=conf,
                        agree=agree.astype(jnp.int32),
                    )

                carry, _ = compact_apply(segment, ~carry["done"], carry, carry, buckets)
                start = stop
            layers = jnp.asarray(exits, jnp.int32)[carry["exit_index"]]
            return ExitStepOutput(
                predictions=carry["predictions"],
                exit_index=carry["exit_index"],
                layers=jnp.where(valid, layers, 0),
                logits=carry["logits"],
                scores=carry["scores"],
            )

        def step(
            inputs: dict[str, Array],
            valid: Bool[Array, " b"] | None = None,
            threshold: float | None = None,
            patience: int | None = None,
        ) -> ExitStepOutput:
            ids = inputs["input_ids"]
            if ids.ndim != 2 or ids.shape[0] != batch_size:
                raise ValueError(
                    f"input_ids must have shape [{batch_size}, t] for this step, got {ids.shape}"
                )
            self.model.encoder.check_inputs(
                ids, inputs.get("attention_mask"), inputs.get("token_type_ids")
            )
            thr = self.config.threshold if threshold is None else float(threshold)
            if math.isnan(thr):
                raise ValueError("threshold is NaN")
            pat = self.config.patience if patience is None else int(patience)
            if pat < 1:
                raise ValueError(f"patience must be >= 1, got {pat}")
            full = dict(
                input_ids=jnp.asarray(ids, jnp.int32),
                attention_mask=jnp.asarray(
                    inputs.get("attention_mask", jnp.ones_like(ids)), jnp.int32
                ),
                token_type_ids=jnp.asarray(
                    inputs.get("token_type_ids", jnp.zeros_like(ids)), jnp.int32
                ),
            )
            v = jnp.ones((batch_size,), bool) if valid is None else jnp.asarray(valid, bool)
            if v.shape != (batch_size,):
                raise ValueError(f"valid must have shape [{batch_size}], got {v.shape}")
            return run(
                nnx.state(self), full, v, jnp.asarray(thr, jnp.float32), jnp.asarray(pat, jnp.int32)
            )

        return step
