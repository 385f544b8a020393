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
from jaxtyping import Array, Bool, Float, Int

from elang_jax.core import bucket_sizes, compact_apply
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
    score: Score = Score.ENERGY
    threshold: float = math.inf
    temperature: float = 1.0
    batch_size: int = 64

    def __post_init__(self):
        object.__setattr__(self, "score", Score(self.score))
        if math.isnan(self.threshold):
            raise ValueError(f"tier {self.name!r}: threshold is NaN")
        if math.isnan(self.temperature) or self.temperature <= 0:
            raise ValueError(f"tier {self.name!r}: temperature must be > 0, got {self.temperature}")
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
    """Per-example results. `scores[:, k]` is NaN where tier k did not run."""

    predictions: Int[Array, " b"]
    tier: Int[Array, " b"]
    logits: Float[Array, "b c"]
    scores: Float[Array, "b k"]


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
        self._steps: dict[int, Any] = {}

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

    def serving_step(self, batch_size: int):
        """A jitted `step(inputs, valid=None, thresholds=None) -> CascadeOutput`.

        `inputs` is one dict (input_ids, attention_mask, token_type_ids; [b t] int32) shared
        by all tiers, or a sequence of such dicts, one per tier (tiers may tokenize
        differently; rows must be the same examples). `valid` [b] marks real rows: padding
        rows never escalate. `thresholds` (N-1 floats) may change between calls without
        recompiling. Tier k + 1 runs on the smallest bucket of `bucket_sizes(batch_size)`
        holding the examples tier k could not answer; an empty bucket skips the tier.
        Steps are cached per batch size, so each compiles once.
        """
        if batch_size not in self._steps:
            self._steps[batch_size] = self._build_step(batch_size)
        return self._steps[batch_size]

    def _build_step(self, batch_size: int):
        graphdefs, states = zip(*(nnx.split(t.model) for t in self.tiers), strict=True)
        kinds = [t.config.score for t in self.tiers]
        temps = [t.config.temperature for t in self.tiers]
        buckets = bucket_sizes(batch_size, self.bucket_fractions)
        n = len(self.tiers)

        @jax.jit
        def run(states, inputs, valid, thresholds):
            models = [nnx.merge(g, s) for g, s in zip(graphdefs, states, strict=True)]
            logits = _logits(models[0], inputs[0])
            b = logits.shape[0]
            scores = jnp.full((b, n), jnp.nan, jnp.float32)
            s0 = score(kinds[0], logits, temps[0])
            scores = scores.at[:, 0].set(s0)
            state = dict(
                predictions=jnp.argmax(logits, -1).astype(jnp.int32),
                tier=jnp.zeros((b,), jnp.int32),
                logits=logits,
                scores=scores,
                done=(s0 >= thresholds[0]) | ~valid,
            )
            for k in range(1, n):

                def run_tier(rows, row_valid, k=k):
                    lg = _logits(models[k], rows["inputs"])
                    s = score(kinds[k], lg, temps[k])
                    accept = jnp.ones_like(s, bool) if k == n - 1 else s >= thresholds[k]
                    return dict(
                        predictions=jnp.argmax(lg, -1).astype(jnp.int32),
                        tier=jnp.full(s.shape, k, jnp.int32),
                        logits=lg,
                        scores=rows["scores"].at[:, k].set(s),
                        done=accept,
                    )

                state, _ = compact_apply(
                    run_tier,
                    ~state["done"],
                    dict(inputs=inputs[k], scores=state["scores"]),
                    state,
                    buckets,
                )
            return CascadeOutput(
                predictions=state["predictions"],
                tier=state["tier"],
                logits=state["logits"],
                scores=state["scores"],
            )

        def step(
            inputs: dict[str, Array] | Sequence[dict[str, Array]],
            valid: Bool[Array, " b"] | None = None,
            thresholds: Sequence[float] | None = None,
        ) -> CascadeOutput:
            per_tier = [inputs] * n if isinstance(inputs, dict) else list(inputs)
            if len(per_tier) != n:
                raise ValueError(f"need inputs for {n} tiers, got {len(per_tier)}")
            for k, inp in enumerate(per_tier):
                shape = tuple(inp["input_ids"].shape)
                if shape[0] != batch_size:
                    raise ValueError(
                        f"tier {k} input_ids have batch {shape[0]}; this step was built for "
                        f"batch {batch_size}"
                    )
                check = getattr(getattr(self.tiers[k].model, "encoder", None), "check_inputs", None)
                if check is not None:
                    check(inp["input_ids"], inp["attention_mask"], inp.get("token_type_ids"))
            th = self.thresholds if thresholds is None else np.asarray(thresholds, np.float32)
            if th.shape != (n - 1,) or np.isnan(th).any():
                raise ValueError(f"thresholds must be {n - 1} non-NaN floats, got {th}")
            th = np.concatenate([th, [np.inf]]).astype(np.float32)
            v = jnp.ones((batch_size,), bool) if valid is None else jnp.asarray(valid, bool)
            per_tier = [{k: jnp.asarray(x, jnp.int32) for k, x in d.items()} for d in per_tier]
            return run(list(states), per_tier, v, jnp.asarray(th))

        step.buckets = buckets  # type: ignore[attr-defined]
        return step

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
