"""Model cascades: E-LANG energy routing, TangoBERT confidence cascades, CascadeBERT.

A `Cascade` is N >= 2 tiers, cheapest first. Tier k answers an example when its score
(higher = more confident) reaches its threshold; otherwise the example goes to tier k + 1.
The last tier always answers. One definition, two execution paths:

  * `predict_dataset` (offline, TangoBERT): tier 1 over the whole dataset at its own batch
    size, the hard examples gathered and re-batched at tier 2's batch size, and so on;
    predictions are scattered back by index.
  * `serving_step` (compiled): one jitted call takes a padded batch and returns predictions
    and the tier that answered each example; tier k + 1 runs only on the bucket of examples
    tier k could not answer (the compaction core), so the Super model's cost is paid only
    for the escalated share (rounded up to a bucket).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int

from elang_jax import flops
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
from elang_jax.models import step_inputs
from elang_jax.routing import Score, score


@dataclasses.dataclass(frozen=True, kw_only=True)
class TierConfig:
    """How one tier decides. `threshold` is ignored for the last tier (it always answers).

    Attributes:
      name: label used in reports.
      score: confidence score (see `elang_jax.routing.Score`).
      threshold: keep the tier's answer when score >= threshold. -inf keeps everything,
        +inf escalates everything.
      temperature: softmax/energy temperature, > 0.
      batch_size: this tier's batch size on the offline path.
    """

    name: str
    score: Score | str = Score.ENERGY
    threshold: float = math.inf
    temperature: float = 1.0
    batch_size: int = 64

    def __post_init__(self):
        object.__setattr__(self, "score", Score(self.score))
        if math.isnan(self.threshold):
            raise ValueError(f"tier {self.name!r}: threshold is NaN")
        from elang_jax.routing import check_temperature  # kept local to this method

        t = check_temperature(self.temperature, where=f"tier {self.name!r}: ")
        object.__setattr__(self, "temperature", t)
        if self.batch_size < 1:
            raise ValueError(f"tier {self.name!r}: batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass
class Tier:
    """A classifier and how it decides.

    Attributes:
      model: an NNX classifier: `model(input_ids, attention_mask, token_type_ids).logits`.
      config: its TierConfig.
      tokenizer: the tier's own tokenizer (tiers may tokenize differently); optional.
    """

    model: nnx.Module
    config: TierConfig
    tokenizer: Any = None

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)  # type: ignore[attr-defined]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CascadeOutput:
    """Per-example results. `scores[:, k]` is NaN where tier k did not run.

    `buckets_used` [shards K] holds the rows each tier ran on, per data shard (one row
    without a mesh): tier 0 all the shard's rows, tier k its bucket (0: skipped).
    """

    predictions: Int[Array, " b"]
    tier: Int[Array, " b"]
    logits: Float[Array, "b c"]
    scores: Float[Array, "b k"]
    buckets_used: Int[Array, "shards k"]


def _logits(model: nnx.Module, inputs: dict[str, Array]) -> Array:
    out = model(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"))
    return out.logits.astype(jnp.float32)


class Cascade:
    """N >= 2 tiers, cheapest first (see the module docstring)."""

    def __init__(self, tiers: Sequence[Tier], bucket_fractions=(0.0, 0.125, 0.25, 0.5, 1.0)):
        tiers = list(tiers)
        if len(tiers) < 2:
            raise ValueError(f"a cascade needs at least 2 tiers, got {len(tiers)}")
        labels = {t.config.name: t.num_labels for t in tiers}
        if len(set(labels.values())) != 1:
            raise ValueError(f"tiers have mismatched label spaces (num_labels per tier): {labels}")
        names = [t.config.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be distinct, got {names}")
        self.tiers = tiers
        self.bucket_fractions = tuple(bucket_fractions)
        self._engine = StepEngine(_CascadeProgram(self), self.bucket_fractions, self.example_flops)

    @property
    def thresholds(self) -> np.ndarray:
        return np.array([t.config.threshold for t in self.tiers[:-1]], np.float32)

    def with_thresholds(self, thresholds: Sequence[float]) -> Cascade:
        """The same cascade with new thresholds for tiers 1..N-1."""
        if len(thresholds) != len(self.tiers) - 1:
            raise ValueError(f"need {len(self.tiers) - 1} thresholds, got {len(thresholds)}")
        tiers = [
            dataclasses.replace(t, config=dataclasses.replace(t.config, threshold=float(th)))
            for t, th in zip(
                self.tiers, [*thresholds, self.tiers[-1].config.threshold], strict=True
            )
        ]
        return Cascade(tiers, self.bucket_fractions)

    # ------------------------------------------------------------------ compiled path

    def serving_step(
        self, batch_size: int, *, mesh: Mesh | None = None, rebalance: bool = False
    ) -> CompiledStep:
        """The compiled `step(inputs, valid=None, thresholds=None) -> CascadeOutput`.

        `inputs` is one dict (input_ids, attention_mask, token_type_ids; [b t] int32) shared
        by all tiers, or a sequence of such dicts, one per tier (tiers may tokenize
        differently; rows must be the same examples). `valid` [b] marks real rows: padding
        rows never escalate. `thresholds` (N-1 floats) may change between calls without
        recompiling. Tier k + 1 runs on the smallest bucket of `bucket_sizes(batch_size)`
        holding the examples tier k could not answer; an empty bucket skips the tier.
        Steps are cached per batch size; each reads the tiers as they are at every call,
        so replacing a tier's model or config takes effect (with a recompile).

        With a `mesh`, the rows are split over its "data" (and "expert") axes and each
        shard routes its own (`elang_jax.engine.DataParallel`); `rebalance` deals the
        escalated rows out evenly over the shards before each later tier. Outputs are the
        same either way.
        """
        return self._engine.step(batch_size, mesh, rebalance)

    def example_flops(self, out: CascadeOutput, length: int | Sequence[int]) -> np.ndarray:
        """[b] analytic FLOPs of each example of a batch padded to `length` (one length per
        tier when the tiers had their own inputs): every tier that ran on it
        (`elang_jax.flops.classifier_flops`)."""
        lengths = per_tier_lengths(length, len(self.tiers))
        ran = ~np.isnan(np.asarray(out.scores))
        # Every tier's classifier has a `config`; `Tier.model` is typed as any nnx.Module.
        configs = [t.model.config for t in self.tiers]  # pyright: ignore[reportAttributeAccessIssue]
        cost = [flops.classifier_flops(c, t) for c, t in zip(configs, lengths, strict=True)]
        return ran.astype(np.float64) @ np.array(cost, np.float64)

    # ------------------------------------------------------------------ offline path

    def encode(self, examples, max_length: int, *, truncate: bool = False) -> list:
        """Each tier's own tokenization of the same GLUE examples (for `predict_dataset` or
        the per-tier inputs of `serving_step`). Every tier needs its `tokenizer`."""
        from elang_jax.data import encode_glue

        missing = [t.config.name for t in self.tiers if t.tokenizer is None]
        if missing:
            raise ValueError(f"tiers without a tokenizer: {missing}")
        return [
            encode_glue(
                t.tokenizer,
                examples,
                max_length,
                truncate=truncate,
                vocab_size=t.model.config.vocab_size,  # type: ignore[attr-defined]
            )
            for t in self.tiers
        ]

    def predict_dataset(self, encoded, length_buckets) -> dict[str, np.ndarray]:
        """TangoBERT's offline path over a whole dataset.

        Args:
          encoded: an `elang_jax.data.Encoded` shared by all tiers, or one per tier (same
            examples, each tier's own tokenization).
          length_buckets: `elang_jax.data.LengthBuckets` for padding.

        Returns:
          dict with predictions [n], tier [n], logits [n, c], scores [n, N] (NaN where a
          tier did not run), and examples_per_tier [N].
        """
        n_tiers = len(self.tiers)
        per_tier = [encoded] * n_tiers if not isinstance(encoded, (list, tuple)) else list(encoded)
        size = len(per_tier[0])
        if any(len(e) != size for e in per_tier):
            raise ValueError(f"per-tier datasets differ in size: {[len(e) for e in per_tier]}")
        c = self.tiers[0].num_labels
        predictions = np.full((size,), -1, np.int32)
        tier_of = np.full((size,), -1, np.int32)
        logits_all = np.zeros((size, c), np.float32)
        scores = np.full((size, n_tiers), np.nan, np.float32)
        todo = np.arange(size)
        counts = []
        for k, tier in enumerate(self.tiers):
            counts.append(len(todo))
            if len(todo) == 0:
                continue
            lg = dataset_logits(
                tier.model, per_tier[k].select(todo), tier.config.batch_size, length_buckets
            )
            logits_all[todo] = lg
            predictions[todo] = lg.argmax(-1)
            tier_of[todo] = k
            scores[todo, k] = np.asarray(score(tier.config.score, lg, tier.config.temperature))
            if k < n_tiers - 1:
                todo = todo[scores[todo, k] < tier.config.threshold]
        return dict(
            predictions=predictions,
            tier=tier_of,
            logits=logits_all,
            scores=scores,
            examples_per_tier=np.asarray(counts, np.int64),
        )


class _CascadeProgram:
    """The cascade as a step-engine program: plain classifier tiers."""

    def __init__(self, cascade: Cascade):
        self.cascade = cascade

    def structure(self):
        tiers = self.cascade.tiers
        return [t.model for t in tiers], tuple(
            (t.config.score, t.config.temperature) for t in tiers
        )

    def prepare(self, batch_size, inputs, valid=None, thresholds=None):
        tiers = self.cascade.tiers
        n = len(tiers)
        prepared = [
            step_inputs(inp, batch_size, [e] if (e := _encoder(t.model)) is not None else [])
            for inp, t in zip(per_tier(inputs, n), tiers, strict=True)
        ]
        th = step_thresholds("thresholds", thresholds, self.cascade.thresholds, n - 1)
        th = np.concatenate([th, [np.inf]]).astype(np.float32)
        return prepared, step_valid(valid, batch_size), jnp.asarray(th)

    def run(self, static, modules, inputs, valid, thresholds, buckets):
        def tier(k):
            kind, temperature = static[k]

            def run_tier(rows, row_valid):
                logits = _logits(modules[k], rows)
                return TierResult(logits=logits, score=score(kind, logits, temperature))

            return run_tier

        out = cascade_loop(
            [tier(k) for k in range(len(modules))], inputs, valid, thresholds, buckets
        )
        return CascadeOutput(**out)


def _encoder(model: nnx.Module):
    """The BERT-family encoder whose `check_inputs` a tier's inputs must pass, if any."""
    encoder = getattr(model, "encoder", None)
    return encoder if hasattr(encoder, "check_inputs") else None


def dataset_logits(model: nnx.Module, encoded, batch_size: int, length_buckets) -> np.ndarray:
    """[n, c] float32 logits of a classifier over a whole `Encoded` dataset, in its order.

    Batches are sorted by length (less padding) and padded to `length_buckets`, so the
    forward compiles once per bucket.
    """
    from elang_jax.data import iterate_batches, restore_order

    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, batch):
        return _logits(nnx.merge(graphdef, state), batch)

    idx, vals = [], []
    for b in iterate_batches(
        encoded, batch_size, length_buckets, shuffle=False, sort_by_length=True
    ):
        inputs = dict(
            input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids
        )
        idx.append(b.index[b.valid])
        vals.append(np.asarray(forward(state, inputs))[b.valid])
    return restore_order(idx, vals, len(encoded))
