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
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, ArrayLike, Float, Int

from elang_jax import flops
from elang_jax.compose._config import ComposedConfig, ComposedTierConfig
from elang_jax.compose._tier import (
    classifier_of,
    schedule_of,
    set_active_experts,
    tier_exit_logits,
    tier_forward,
)
from elang_jax.engine import (
    CompiledStep,
    StepEngine,
    TierResult,
    cascade_loop,
    per_tier,
    per_tier_lengths,
    step_thresholds,
    step_valid,
)
from elang_jax.exits import MultiExit
from elang_jax.models import step_inputs
from elang_jax.moe import MoEFeedForward, RouterKind, ffn_sites
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
      buckets_used: [shards K] rows each tier ran on, per data shard (one row without a
        mesh): tier 0 all the shard's rows, tier k its bucket (0: skipped).
    """

    predictions: Int[Array, " b"]
    tier: Int[Array, " b"]
    logits: Float[Array, "b c"]
    scores: Float[Array, "b k"]
    exit_index: Int[Array, "b k"]
    layers: Int[Array, "b k"]
    buckets_used: Int[Array, "shards k"]


def _check_tier(module: nnx.Module, model: nnx.Module, tier: ComposedTierConfig) -> None:
    """That a tier's module can run its config's methods; errors name the tier."""
    if tier.exits is not None:
        if not isinstance(module, MultiExit):
            raise ValueError(
                f"tier {tier.name!r} has exits (policy={str(tier.exits.policy)!r}): its module "
                f"must be a MultiExit, got {type(module).__name__}"
            )
        wanted = tier.exits.exit_layers
        if wanted is not None and tuple(wanted) != tuple(module.exit_layers):
            raise ValueError(
                f"tier {tier.name!r}: exits.exit_layers={tuple(wanted)} but its MultiExit has "
                f"exits after layers {tuple(module.exit_layers)}"
            )
    if tier.acc_rate is not None and tier.acc_config.keep_first < 1:
        raise ValueError(f"tier {tier.name!r}: a classifier reads token 0 (keep_first >= 1)")
    if tier.moe is None:
        return
    ffns = [site.ffn for site in ffn_sites(model)]  # pyright: ignore[reportArgumentType]
    dense = [i for i, f in enumerate(ffns) if not isinstance(f, MoEFeedForward)]
    if dense:
        raise ValueError(
            f"tier {tier.name!r} has moe (top_k={tier.moe.top_k}) but layers {dense} have "
            "dense FFNs: MoEfy the model first (elang_jax.moe.moefy)"
        )
    for i, ffn in enumerate(ffns):
        assert isinstance(ffn, MoEFeedForward)
        if ffn.config.num_experts != tier.moe.num_experts:
            raise ValueError(
                f"tier {tier.name!r}: moe.num_experts={tier.moe.num_experts} but layer {i} has "
                f"{ffn.config.num_experts} experts"
            )


class ComposedClassifier:
    """Tiers of BERT-family classifiers, each with its own exits, pruning and MoE FFNs.

    Args:
      modules: one per tier, cheapest first: a `BertForSequenceClassification`, or an
        `elang_jax.exits.MultiExit` wrapping one when the tier exits early. A tier with
        `moe` must have MoE FFNs (`elang_jax.moe.moefy`); the compiled steps run them with
        `moe.top_k` experts (the modules passed in are not changed). For an example's
        output to be independent of its batch, MoE tiers should be dropless
        (`capacity_factor=None`).
      config: the composed system.
    """

    def __init__(self, modules: Sequence[nnx.Module], config: ComposedConfig):
        modules = list(modules)
        if len(modules) != len(config.tiers):
            raise ValueError(f"{len(config.tiers)} tiers configured but {len(modules)} modules")
        labels = {}
        for module, tier in zip(modules, config.tiers, strict=True):
            model = classifier_of(module)
            _check_tier(module, model, tier)
            labels[tier.name] = int(model.config.num_labels)
        if len(set(labels.values())) != 1:
            raise ValueError(f"tiers have mismatched label spaces (num_labels per tier): {labels}")
        self.modules = modules
        self.config = config
        self._engine = StepEngine(
            _ComposedProgram(self), config.cascade_bucket_fractions, self.example_flops
        )

        # Jitted per system, so that its offline programs (a calibration pass compiles one
        # per tier and length) are freed with it; one module-level jit would keep every
        # system's for the life of the process.
        def offline(graphdef, tier, state, inputs):
            return _offline_logits(graphdef, tier, state, inputs)

        self._offline = jax.jit(offline, static_argnums=(0, 1))

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
    def serving_step(
        self, batch_size: int, *, mesh: Mesh | None = None, rebalance: bool = False
    ) -> CompiledStep:
        """The compiled `step(inputs, valid=None, thresholds=None, exit_thresholds=None)`.

        `inputs` holds input_ids, attention_mask, token_type_ids ([b t] int32), shared by all
        tiers, or is a sequence of one such dict per tier (tiers with their own tokenizers;
        each tier's own length t). `valid` [b] marks real rows (padding rows run nothing
        after the first tier's embedding and never escalate). `thresholds` (K - 1 cascade
        thresholds) and `exit_thresholds` (K, ignored for tiers without exits) default to
        the config's and may change between calls without recompiling. Returns a
        `ComposedOutput`. Steps are cached per batch size and read the modules as they are
        at every call. With a `mesh`, the rows are split over its "data" (and "expert")
        axes and each shard routes its own; `rebalance` deals escalated rows out evenly
        over the shards before each later tier (`elang_jax.engine.DataParallel`; not with
        tiers that pack their own rows, `Packing.PER_SEGMENT`).
        """
        own = [t.name for k, t in enumerate(self.config.tiers) if self.config.packs_own(k)]
        if rebalance and own:
            raise ValueError(
                f"rebalance deals escalated rows out before a tier is packed, but tiers {own} "
                "pack their own rows segment by segment (packing='per_segment'): use "
                "packing='nested' to rebalance"
            )
        return self._engine.step(batch_size, mesh, rebalance)

    # ------------------------------------------------------------------ offline path
    def exit_logits(self, k: int, inputs: Mapping[str, ArrayLike]) -> Float[Array, "x b c"]:
        """Tier k's every exit's logits on a batch under its pruning and MoE settings (no
        example leaves early): what exit calibration sweeps thresholds over. A tier without
        exits returns its logits as one exit."""
        full = step_inputs(inputs, None, [classifier_of(self.modules[k]).encoder])
        graphdef, state = nnx.split(self.modules[k])
        # The static tier leaves the thresholds out, as the serving step's does.
        tier = self.config.tiers[k].with_thresholds(0.0, 0.0)
        return self._offline(graphdef, tier, state, full)

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
        ffns = [site.ffn for site in ffn_sites(model)]
        total = 0
        for i in range(layers):
            t = counts[i]
            total += flops.attention_flops(t, t, d, d)
            ffn = ffns[i]
            if isinstance(ffn, MoEFeedForward):
                c = ffn.config
                top_k = c.top_k if tier.moe is None else tier.moe.top_k
                total += flops.moe_ffn_flops(
                    t, d, mc.intermediate_size, c.num_experts, top_k, RouterKind(c.router).value
                )
            else:
                total += flops.ffn_flops(t, d, mc.intermediate_size)
            if i + 1 < len(counts) and counts[i + 1] < t:
                total += flops.acc_score_flops(mc.num_heads, t, t)
        return total + (exit_index + 1) * flops.head_flops(d, mc.num_labels)

    def example_flops(
        self, out: ComposedOutput, length: int | Sequence[int]
    ) -> Float[np.ndarray, " b"]:
        """[b] analytic FLOPs of each example of a batch padded to `length` (one length per
        tier when the tiers had their own inputs)."""
        lengths = per_tier_lengths(length, self.num_tiers)
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
                    cache[key] = self.tier_flops(k, lengths[k], *key[1:])
                cost[i] += cache[key]
        return cost


class _ComposedProgram:
    """The composed system as a step-engine program: tiers with exits, ACC and MoE."""

    def __init__(self, system: ComposedClassifier):
        self.system = system

    def structure(self):
        cfg = self.system.config
        # Thresholds are traced arguments: the static description leaves them out, so that
        # a config with new thresholds reuses the compiled program.
        tiers = tuple(t.with_thresholds(0.0, 0.0) for t in cfg.tiers)
        own = tuple(cfg.packs_own(k) for k in range(len(tiers)))
        return self.system.modules, (tiers, own)

    def prepare(self, batch_size, inputs, valid=None, thresholds=None, exit_thresholds=None):
        system = self.system
        tiers = system.config.tiers
        n = len(tiers)
        encoders = [classifier_of(m).encoder for m in system.modules]
        if isinstance(inputs, Mapping):  # shared: checked once against every tier's encoder
            full = [step_inputs(inputs, batch_size, encoders)] * n
        else:
            full = [
                step_inputs(inp, batch_size, [e])
                for inp, e in zip(per_tier(inputs, n), encoders, strict=True)
            ]
        th = step_thresholds("thresholds", thresholds, [t.threshold for t in tiers[:-1]], n - 1)
        eth = step_thresholds(
            "exit_thresholds", exit_thresholds, [t.exit_threshold for t in tiers], n
        )
        params = dict(
            thresholds=jnp.asarray(np.concatenate([th, [np.inf]]).astype(np.float32)),
            exit_thresholds=jnp.asarray(eth),
        )
        return full, step_valid(valid, batch_size), params

    def run(self, static, modules, inputs, valid, params, buckets):
        tiers, own = static
        for module, tier in zip(modules, tiers, strict=True):
            set_active_experts(module, tier)

        def tier_fn(k):
            def run_tier(rows, row_valid):
                out = tier_forward(
                    modules[k],
                    tiers[k],
                    rows,
                    row_valid,
                    params["exit_thresholds"][k],
                )
                route = tiers[k].route
                s = score(route.score, out["logits"], route.temperature)
                extra = dict(exit_index=out["exit_index"], layers=out["layers"])
                return TierResult(logits=out["logits"], score=s, extra=extra, rows=out["rows"])

            return run_tier

        out = cascade_loop(
            [tier_fn(k) for k in range(len(tiers))],
            inputs,
            valid,
            params["thresholds"],
            buckets,
            fills=dict(exit_index=-1, layers=0),
            packs_own=own,
        )
        return ComposedOutput(**out)


def _offline_logits(graphdef, tier: ComposedTierConfig, state, inputs) -> Float[Array, "x b c"]:
    module = nnx.merge(graphdef, state)
    set_active_experts(module, tier)
    return tier_exit_logits(module, tier, inputs)
