"""The tier loop every cascade runs: tier k + 1 only on the rows tier k could not answer.

Tier 0 runs on the whole batch; each later tier runs through the compaction core on the
smallest bucket holding the escalated rows (an empty bucket runs nothing), unless it packs
its own rows (a tier that exits early can pack each segment between exits on its own: one
compaction per segment instead of a segment's compaction nested in the tier's). A tier is a
traced function `(inputs, valid) -> TierResult`; the loop keeps, per example, the answer of
the tier that accepted it and each tier's score and extra fields.

Shape names: b rows, c classes, K tiers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from elang_jax.engine._rebalance import escalate_apply


@dataclasses.dataclass(frozen=True)
class TierResult:
    """One tier's answer on the rows it ran.

    Attributes:
      logits: [n c] float32.
      score: [n] float32 cascade confidence (higher = keep the answer).
      extra: per-row fields reported per tier (e.g. exit index, layers run).
      rows: for a tier that packs its own rows, the rows it first ran on (int32 []).
    """

    logits: Float[Array, "n c"]
    score: Float[Array, " n"]
    extra: Mapping[str, Array] = dataclasses.field(default_factory=dict)
    rows: Array | None = None


TierFn = Callable[[Any, Bool[Array, " n"]], TierResult]


def cascade_loop(
    tiers: Sequence[TierFn],
    inputs: Sequence[Any],
    valid: Bool[Array, " b"],
    thresholds: Float[Array, " K"],
    buckets: tuple[int, ...],
    fills: Mapping[str, int] | None = None,
    packs_own: Sequence[bool] | None = None,
) -> dict[str, Array]:
    """Runs the cascade (traced).

    Args:
      tiers: K tier functions, cheapest first.
      inputs: K per-row input pytrees (tiers may tokenize differently).
      valid: [b] real rows; padding rows never escalate.
      thresholds: [K] tier k keeps its answer when score >= thresholds[k]; the last entry
        is ignored (the last tier always answers).
      buckets: static bucket sizes for this batch.
      fills: for each extra field, its value where a tier did not run.
      packs_own: per tier, whether it packs its own rows: it then gets the whole batch,
        `valid` marking the escalated rows, and reports the rows it ran on
        (`TierResult.rows`). Default: no tier does.

    Returns:
      predictions [b], tier [b], logits [b c], scores [b K] (NaN where a tier did not
      run), each extra field as [b K], and buckets_used [1 K]: the rows each tier ran on
      (tier 0: all b; an escalated tier: its bucket, 0 when skipped; one that packs its
      own rows: what it reports). Under a data-parallel step each shard reports its own
      row, stacked by the engine into [shards K].
    """
    fills = dict(fills or {})
    n = len(tiers)
    own = tuple(packs_own) if packs_own is not None else (False,) * n
    if len(own) != n:
        raise ValueError(f"{n} tiers but packs_own has {len(own)} entries")
    first = tiers[0](inputs[0], valid)
    b = first.logits.shape[0]
    state: dict[str, Array] = dict(
        predictions=jnp.argmax(first.logits, -1).astype(jnp.int32),
        tier=jnp.zeros((b,), jnp.int32),
        logits=first.logits,
        scores=jnp.full((b, n), jnp.nan, jnp.float32).at[:, 0].set(first.score),
        done=(first.score >= thresholds[0]) | ~valid,
    )
    for key, fill in fills.items():
        column = jnp.where(valid, first.extra[key], fill)
        state[key] = jnp.full((b, n), fill, column.dtype).at[:, 0].set(column)
    used = [jnp.int32(b)]
    for k in range(1, n):

        def escalated(rows, row_valid, k=k):
            # Returns (the tier's per-row fields, the rows it reports having run on).
            out = tiers[k](rows["inputs"], row_valid)
            accept = jnp.ones_like(out.score, bool) if k == n - 1 else out.score >= thresholds[k]
            new = dict(
                predictions=jnp.argmax(out.logits, -1).astype(jnp.int32),
                tier=jnp.full(out.score.shape, k, jnp.int32),
                logits=out.logits,
                scores=rows["scores"].at[:, k].set(out.score),
                done=accept,
            )
            for key in fills:
                new[key] = rows[key].at[:, k].set(out.extra[key])
            return new, out.rows

        keep = {key: state[key] for key in ("scores", *fills)}
        route = ~state["done"]
        if own[k]:
            # The whole batch, the escalated rows marked valid; the rest keep their state.
            new, ran = escalated(dict(inputs=inputs[k], **keep), route)
            if ran is None:
                raise ValueError(f"tier {k} packs its own rows but reports none (rows=None)")
            state = {
                key: jnp.where(route.reshape(-1, *(1,) * (v.ndim - 1)), new[key], v)
                for key, v in state.items()
            }
            used.append(jnp.asarray(ran, jnp.int32))
            continue
        # Escalated rows: packed on this shard, or first dealt out evenly over the data
        # shards when the step rebalances.
        state, rows = escalate_apply(
            lambda r, v, fn=escalated: fn(r, v)[0],
            route,
            dict(inputs=inputs[k], **keep),
            state,
            buckets,
        )
        used.append(rows)
    state.pop("done")
    # [1 K]
    state["buckets_used"] = jnp.stack(used)[None]
    return state
