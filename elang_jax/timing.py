"""Compiled classifier forwards and their wall-clock on the same padded batches.

Shared by the benchmarks in eval/ and by `elang-jax demo`. A speed-up is only meaningful when
both sides run the same batches in the same process, compiled beforehand; on a shared
machine the sides must also be timed alternately, so that a slow spell hits both alike.

Shape vocabulary: b batch rows, t padded length, c classes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from elang_jax.data import Batch

BatchFn = Callable[[Batch], Any]


def batch_inputs(batch: Batch) -> dict[str, Int[np.ndarray, "b t"]]:
    """The model inputs of a padded batch (input_ids, attention_mask, token_type_ids)."""
    return dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        token_type_ids=batch.token_type_ids,
    )


def logits_fn(model: nnx.Module) -> Callable[[Batch], Float[Array, "b c"]]:
    """A jitted `fn(batch) -> logits [b c]` of a classifier, compiled once per batch shape.

    Split once and merged inside the trace: only arrays cross the `jax.jit` boundary, the
    cheapest per-call path in NNX (see docs on the stack).
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, inputs):
        out = nnx.merge(graphdef, state)(
            inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
        )
        return out.logits.astype(jnp.float32)

    return lambda batch: run(state, batch_inputs(batch))


def _pass(fn: BatchFn, batches: Sequence[Batch]) -> float:
    t0 = time.perf_counter()
    for b in batches:
        jax.block_until_ready(fn(b))
    return time.perf_counter() - t0


def warm_up(
    fns: Sequence[BatchFn],
    batches: Sequence[Batch],
    progress: Callable[[int], Any] | None = None,
) -> None:
    """Runs every function on every batch once: compiles each batch shape before timing.

    `progress` is called with 1 after each function's pass.
    """
    for fn in fns:
        for b in batches:
            jax.block_until_ready(fn(b))
        if progress is not None:
            progress(1)


def time_total(fn: BatchFn, batches: Sequence[Batch], repeats: int) -> float:
    """Median seconds of one pass of `fn` over `batches` (after a warm-up pass)."""
    warm_up([fn], batches)
    return float(np.median([_pass(fn, batches) for _ in range(repeats)]))


def time_pair(fa: BatchFn, fb: BatchFn, batches: Sequence[Batch], repeats: int):
    """Median seconds of one pass over `batches` for fa and for fb, timed alternately so
    that a slow spell of a shared machine hits both sides alike."""
    warm_up([fa, fb], batches)
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(_pass(fa, batches))
        tb.append(_pass(fb, batches))
    return float(np.median(ta)), float(np.median(tb))


@dataclasses.dataclass(frozen=True)
class ReferenceTiming:
    """One function's timing against the reference.

    Attributes:
      seconds: median seconds of one pass over the batches.
      reference_seconds: median seconds of the reference's passes next to this function's.
      speedup: median over rounds of (mean of the reference passes just before and just
        after this function's pass) / (this function's pass).
      rounds: the per-round speed-ups.
    """

    seconds: float
    reference_seconds: float
    speedup: float
    rounds: tuple[float, ...]


def time_against_reference(
    reference: BatchFn,
    candidates: Mapping[str, BatchFn],
    batches: Sequence[Batch],
    rounds: int,
    *,
    compiled: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, ReferenceTiming]:
    """Times several functions against one reference, interleaved, after a warm-up pass.

    Each round runs reference, first candidate, reference, second candidate, ..., reference:
    every candidate's pass sits between two reference passes, and its round's speed-up is
    the mean of those two over its own time. A disturbance of the shared machine therefore
    hits a candidate and the reference it is compared with alike, at the cost of one
    reference pass per candidate (not two). The reported speed-up is the median over rounds.

    Args:
      reference: the baseline (e.g. the large model alone), `fn(batch)`.
      candidates: name -> `fn(batch)`; every function must accept every batch.
      batches: the padded batches, the same for every side.
      rounds: timing rounds (after one warm-up pass of every function).
      compiled: every function has already run on every batch shape: skip the warm-up pass.
      progress: called with 1 after each pass, warm-up passes included (e.g. a tqdm bar's
        `update`); `reference_passes(len(candidates), rounds, compiled)` passes in all.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not batches:
        raise ValueError("no batches to time")
    tick = progress or (lambda _: None)
    if not compiled:
        warm_up([reference, *candidates.values()], batches, tick)
    names = list(candidates)
    ref: list[list[float]] = [[] for _ in range(len(names) + 1)]
    own: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        ref[0].append(_pass(reference, batches))
        tick(1)
        for i, name in enumerate(names):
            own[name].append(_pass(candidates[name], batches))
            tick(1)
            ref[i + 1].append(_pass(reference, batches))
            tick(1)
    out = {}
    for i, name in enumerate(names):
        around = [(a + b) / 2 for a, b in zip(ref[i], ref[i + 1], strict=True)]
        ratios = tuple(a / s for a, s in zip(around, own[name], strict=True))
        out[name] = ReferenceTiming(
            seconds=float(np.median(own[name])),
            reference_seconds=float(np.median(around)),
            speedup=float(np.median(ratios)),
            rounds=ratios,
        )
    return out


def reference_passes(num_candidates: int, rounds: int, compiled: bool = False) -> int:
    """Passes over the batches that `time_against_reference` makes, its warm-up included."""
    return (0 if compiled else num_candidates + 1) + rounds * (2 * num_candidates + 1)
