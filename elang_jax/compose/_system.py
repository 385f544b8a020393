"""`ComposedClassifier`: cascade tiers, early exit, MoE FFNs and ACC pruning in one step.

Every method is an instance of the same compaction core, so they nest: the cascade packs the
examples tier k could not answer into a bucket and runs tier k + 1 on it; inside a tier the
exit loop packs the examples still running after each exit; inside every layer the MoE FFN
dispatches tokens to experts, and between layers ACC keeps a static number of tokens per
example. One jitted step per batch size; the thresholds are arguments, so calibration can
move them without recompiling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from elang_jax import flops
from elang_jax.compose._config import ComposedConfig
from elang_jax.compose._tier import (
    classifier_of,
    schedule_of,
    tier_exit_logits,
    tier_forward,
)
from elang_jax.core import bucket_sizes, compact_apply
from elang_jax.exits import MultiExit
from elang_jax.models import step_inputs
from elang_jax.moe import MoEFeedForward, ffn_sites
from elang_jax.routing import score


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ComposedOutput:
    """Per-example results of a composed step (K tiers).

    Attributes:
      predictions: [b] the answering tier's argmax.
      tier: [b] index of the tier that answered.
      logits: [b c] float32 logits of that tier's exit.
      scores: [b K] each tier's cascade score; NaN where the tier did not run.
      exit_index: [b K] the exit each tier's run left at; -1 where the tier did not run.
      layers: [b K] layers each tier ran for the example; 0 where it did not run.
    """

    predictions: Int[Array, " b"]
    tier: Int[Array, " b"]
    logits: Float[Array, "b c"]
    scores: Float[Array, "b k"]
    exit_index: Int[Array, "b k"]
    layers: Int[Array, "b k"]


class ComposedClassifier:
    """Tiers of BERT-family classifiers, each with its own exits, pruning and MoE FFNs.

    Args:
      modules: one per tier, cheapest first: a `BertForSequenceClassification`, or an
        `elang_jax.exits.MultiExit` wrapping one when the tier exits early. A tier with
        `moe_top_k` must have MoE FFNs (`elang_jax.moe.moefy`); its FFNs are set to run
        `moe_top_k` experts (this changes the module). For an example's output to be
        independent of its batch, MoE tiers should be dropless (`capacity_factor=None`).
      config: the composed system.
    """

    def __init__(self, modules: Sequence[nnx.Module], config: ComposedConfig):
        modules = list(modules)
        if len(modules) != len(config.tiers):
            raise ValueError(f"{len(config.tiers)} tiers configured but {len(modules)} modules")
        labels = {}
        for module, tier in zip(modules, config.tiers, strict=True):
            model = classifier_of(module)
            if tier.exit_policy is not None and not isinstance(module, MultiExit):
                raise ValueError(
                    f"tier {tier.name!r} has exit_policy={tier.exit_policy.value!r}: its module "
                    f"must be a MultiExit, got {type(module).__name__}"
                )
            if tier.acc_rate is not None and tier.acc_config.keep_first < 1:
                raise ValueError(
                    f"tier {tier.name!r}: a classifier reads token 0 (keep_first >= 1)"
                )
            if tier.moe_top_k is not None:
                ffns = [site.ffn for site in ffn_sites(model)]  # pyright: ignore[reportAttributeAccessIssue]
                dense = [i for i, f in enumerate(ffns) if not isinstance(f, MoEFeedForward)]
                if dense:
                    raise ValueError(
                        f"tier {tier.name!r} has moe_top_k={tier.moe_top_k} but layers {dense} "
                        "have dense FFNs: MoEfy the model first (elang_jax.moe.moefy)"
                    )
                for ffn in ffns:
                    if tier.moe_top_k > ffn.config.num_experts:
                        raise ValueError(
                            f"tier {tier.name!r}: moe_top_k={tier.moe_top_k} exceeds the "
                            f"{ffn.config.num_experts} experts"
                        )
                    ffn.config = ffn.config.replace(top_k=tier.moe_top_k)
            labels[tier.name] = int(model.config.num_labels)
        if len(set(labels.values())) != 1:
            raise ValueError(f"tiers have mismatched label spaces (num_labels per tier): {labels}")
        self.modules = modules
        self.config = config
        self._steps: dict[int, Callable[..., ComposedOutput]] = {}
        self._offline: dict[int, Callable[..., Array]] = {}

    @property
    def num_tiers(self) -> int:
        return len(self.modules)

    def exit_layers(self, k: int) -> tuple[int, ...]:
        """Tier k's exit layers (its last layer alone when it does not exit early)."""
        module = self.modules[k]
        if not isinstance(module, MultiExit):
            return (len(classifier_of(module).encoder.layers),)
        return tuple(module.exit_layers)

    # ------------------------------------------------------------------ compiled path
    def serving_step(self, batch_size: int):
        """A jitted `step(inputs, valid=None, thresholds=None, exit_thresholds=None)`.

        `inputs` holds input_ids, attention_mask, token_type_ids ([b t] int32), shared by all
        tiers. `valid` [b] marks real rows (padding rows run nothing after the first tier's
        embedding and never escalate). `thresholds` (K - 1 cascade thresholds) and
        `exit_thresholds` (K, ignored for tiers without exits) default to the config's and
        may change between calls without recompiling. Returns a `ComposedOutput`. Steps are
        cached per batch size.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size not in self._steps:
            self._steps[batch_size] = self._build_step(batch_size)
        return self._steps[batch_size]

    def _build_step(self, batch_size: int):
        cfg = self.config
        graphdefs, states = zip(*(nnx.split(m) for m in self.modules), strict=True)
        n = self.num_tiers
        buckets = bucket_sizes(batch_size, cfg.cascade_bucket_fractions)
        tiers = cfg.tiers
        encoders = [classifier_of(m).encoder for m in self.modules]

        def run_tier(k, modules, inputs, valid, exit_thresholds):
            out = tier_forward(
                modules[k], tiers[k], inputs, valid, exit_thresholds[k], cfg.exit_bucket_fractions
            )
            s = score(tiers[k].score, out["logits"], tiers[k].temperature)
            return out, s

        @jax.jit
        def run(states, inputs, valid, thresholds, exit_thresholds):
            modules = [nnx.merge(g, s) for g, s in zip(graphdefs, states, strict=True)]
            b = inputs["input_ids"].shape[0]
            out, s0 = run_tier(0, modules, inputs, valid, exit_thresholds)
            state = dict(
                predictions=jnp.argmax(out["logits"], -1).astype(jnp.int32),
                tier=jnp.zeros((b,), jnp.int32),
                logits=out["logits"],
                scores=jnp.full((b, n), jnp.nan, jnp.float32).at[:, 0].set(s0),
                exit_index=jnp.full((b, n), -1, jnp.int32)
                .at[:, 0]
                .set(jnp.where(valid, out["exit_index"], -1)),
                layers=jnp.zeros((b, n), jnp.int32).at[:, 0].set(out["layers"]),
                done=(s0 >= thresholds[0]) | ~valid,
            )
            for k in range(1, n):

                def escalated(rows, row_valid, k=k):
                    out, s = run_tier(k, modules, rows["inputs"], row_valid, exit_thresholds)
                    accept = jnp.ones_like(s, bool) if k == n - 1 else s >= thresholds[k]
                    return dict(
                        predictions=jnp.argmax(out["logits"], -1).astype(jnp.int32),
                        tier=jnp.full(s.shape, k, jnp.int32),
                        logits=out["logits"],
                        scores=rows["scores"].at[:, k].set(s),
                        exit_index=rows["exit_index"].at[:, k].set(out["exit_index"]),
                        layers=rows["layers"].at[:, k].set(out["layers"]),
                        done=accept,
                    )

                keep = {key: state[key] for key in ("scores", "exit_index", "layers")}
                state, _ = compact_apply(
                    escalated, ~state["done"], dict(inputs=inputs, **keep), state, buckets
                )
            return ComposedOutput(
                predictions=state["predictions"],
                tier=state["tier"],
                logits=state["logits"],
                scores=state["scores"],
                exit_index=state["exit_index"],
                layers=state["layers"],
            )

        def step(
            inputs: Mapping[str, ArrayLike],
            valid: Bool[Array, " b"] | None = None,
            thresholds: Sequence[float] | None = None,
            exit_thresholds: Sequence[float] | None = None,
        ) -> ComposedOutput:
            full = step_inputs(inputs, batch_size, encoders)
            th = _thresholds("thresholds", thresholds, [t.threshold for t in tiers[:-1]], n - 1)
            th = np.concatenate([th, [np.inf]]).astype(np.float32)
            eth = _thresholds(
                "exit_thresholds", exit_thresholds, [t.exit_threshold for t in tiers], n
            )
            v = jnp.ones((batch_size,), bool) if valid is None else jnp.asarray(valid, bool)
            if v.shape != (batch_size,):
                raise ValueError(f"valid must have shape [{batch_size}], got {v.shape}")
            states = [nnx.state(m) for m in self.modules]
            return run(states, full, v, jnp.asarray(th), jnp.asarray(eth))

        step.buckets = buckets  # type: ignore[attr-defined]
        return step

    # ------------------------------------------------------------------ offline path
    def exit_logits(self, k: int, inputs: Mapping[str, ArrayLike]) -> Float[Array, "e b c"]:
        """Tier k's every exit's logits on a batch under its pruning and MoE settings (no
        example leaves early): what exit calibration sweeps thresholds over. A tier without
        exits returns its logits as one exit."""
        if k not in self._offline:
            self._offline[k] = self._build_offline(k)
        full = step_inputs(inputs, None, [classifier_of(self.modules[k]).encoder])
        return self._offline[k](nnx.state(self.modules[k]), full)

    def _build_offline(self, k: int):
        module, tier = self.modules[k], self.config.tiers[k]
        graphdef = nnx.graphdef(module)

        @jax.jit
        def run(state, inputs):
            return tier_exit_logits(nnx.merge(graphdef, state), tier, inputs)

        return run

    # ------------------------------------------------------------------ cost
    def tier_flops(self, k: int, length: int, layers: int, exit_index: int) -> int:
        """Analytic FLOPs of tier k on one example of padded length `length` that ran
        `layers` layers and left at exit `exit_index`: attention at the tokens ACC kept,
        dense or MoE FFNs (router included), ACC's scoring, and one head per exit passed."""
        module, tier = self.modules[k], self.config.tiers[k]
        model = classifier_of(module)
        mc = model.config
        d = mc.hidden_size
        schedule = schedule_of(tier, mc.num_layers)
        counts = schedule.counts(length) if schedule is not None else (length,) * mc.num_layers
        ffns = [site.ffn for site in ffn_sites(model)]  # pyright: ignore[reportAttributeAccessIssue]
        total = 0
        for i in range(layers):
            t = counts[i]
            total += flops.attention_flops(t, t, d, d)
            ffn = ffns[i]
            if isinstance(ffn, MoEFeedForward):
                c = ffn.config
                total += flops.moe_ffn_flops(
                    t, d, mc.intermediate_size, c.num_experts, c.top_k, c.router.value
                )
            else:
                total += flops.ffn_flops(t, d, mc.intermediate_size)
            if i + 1 < len(counts) and counts[i + 1] < t:
                total += 2 * mc.num_heads * t * t  # ACC: summing the attention probabilities
        head = 2 * d * d + 2 * d * mc.num_labels
        return total + (exit_index + 1) * head

    def example_flops(self, out: ComposedOutput, length: int) -> Float[np.ndarray, " b"]:
        """[b] analytic FLOPs of each example of a batch padded to `length`."""
        layers = np.asarray(out.layers)
        exit_index = np.asarray(out.exit_index)
        cost = np.zeros(layers.shape[0])
        cache: dict[tuple[int, int, int], int] = {}
        for i in range(layers.shape[0]):
            for k in range(self.num_tiers):
                if exit_index[i, k] < 0:
                    continue
                key = (k, int(layers[i, k]), int(exit_index[i, k]))
                if key not in cache:
                    cache[key] = self.tier_flops(k, length, *key[1:])
                cost[i] += cache[key]
        return cost


def _thresholds(name: str, given, default, n: int) -> np.ndarray:
    th = np.asarray(default if given is None else given, np.float32).reshape(-1)
    if th.shape != (n,) or np.isnan(th).any():
        raise ValueError(f"{name} must be {n} non-NaN floats, got {th}")
    return th
