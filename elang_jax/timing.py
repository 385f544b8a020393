"""Wall-clock timing of compiled work, side by side: compiled classifier forwards over padded
batches (`time_against_reference`, the demo) and zero-argument calls (`time_interleaved`,
`elang-jax bench`); eval/ scripts use the older pair helpers (`time_pair`, `time_total`).

A ratio of two timings means something only when both sides ran in the same process,
compiled beforehand, and close together in time: on a shared machine a slow spell then hits
every candidate alike. So each candidate runs once to compile and warm up, then every round
runs each candidate once, the starting candidate rotating from round to round so that none
always runs first (or right after the same neighbour). Every call is followed by
`jax.block_until_ready`: JAX dispatches asynchronously, and a call that returns before its
result is computed would time the dispatch only.

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
      reference_seconds: median seconds of the reference's passes.
      speedup: median over rounds of the reference's pass over this function's pass in
        the same round.
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
    """Times several functions against one reference over the same batches, interleaved.

    The protocol is `time_interleaved`'s, one call being a pass over `batches`: every round
    runs the reference and each candidate once, the starting one rotating from round to
    round, so that a slow spell of a shared machine hits a candidate and the reference of the
    same round alike. A round's speed-up is the reference's pass over the candidate's; the
    reported speed-up is the median over rounds.

    Args:
      reference: the baseline (e.g. the large model alone), `fn(batch)`.
      candidates: name -> `fn(batch)`; every function must accept every batch.
      batches: the padded batches, the same for every side.
      rounds: timing rounds (after one warm-up pass of every function).
      compiled: every function has already run on every batch shape: skip the warm-up pass.
      progress: called with 1 after each pass, warm-up passes included (e.g. a tqdm bar's
        `update`); `reference_passes(len(candidates), rounds, compiled)` passes in all.
    """
    if not batches:
        raise ValueError("no batches to time")
    key = "\0reference"  # cannot clash with a candidate's name

    def over_batches(fn: BatchFn) -> Callable[[], Any]:
        return lambda: [fn(b) for b in batches]

    calls = {key: over_batches(reference)} | {n: over_batches(f) for n, f in candidates.items()}
    timings = time_interleaved(calls, rounds, warm_up=not compiled, progress=progress)
    ref = timings[key].samples_ms
    out = {}
    for name in candidates:
        own = timings[name].samples_ms
        ratios = tuple(a / b for a, b in zip(ref, own, strict=True))
        out[name] = ReferenceTiming(
            seconds=timings[name].median_ms / 1e3,
            reference_seconds=timings[key].median_ms / 1e3,
            speedup=float(np.median(ratios)),
            rounds=ratios,
        )
    return out


def reference_passes(num_candidates: int, rounds: int, compiled: bool = False) -> int:
    """Passes over the batches that `time_against_reference` makes, its warm-up included."""
    return (0 if compiled else num_candidates + 1) + rounds * (num_candidates + 1)


# ----------------------------------------------------------------------------------------------
# Zero-argument calls, side by side


@dataclasses.dataclass(frozen=True)
class Timing:
    """One candidate's wall-clock over the rounds.

    Attributes:
      median_ms: median milliseconds of one call.
      min_ms: fastest call (the least disturbed by other load).
      samples_ms: every round's milliseconds, in round order.
    """

    median_ms: float
    min_ms: float
    samples_ms: tuple[float, ...]


def _call_ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    rounds: int,
    *,
    untimed_before: int = 0,
    warm_up: bool = True,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Timing]:
    """Times zero-argument calls side by side (see the module docstring).

    Args:
      candidates: name -> `fn()`; each returns a pytree of arrays (or anything
        `jax.block_until_ready` accepts). Inputs are bound in the closure, already on the
        device, so transfers are not timed.
      rounds: timing rounds after the warm-up call, >= 1.
      untimed_before: untimed calls of a candidate right before each timed one. For calls
        of a few milliseconds the previous candidate's buffers can leave the allocator
        cold (up to +15 ms measured after `ragged_dot`, eval/bench_moe.py); long calls do
        not need it.
      warm_up: call each candidate once, untimed, before the rounds (False: every
        candidate has already run, e.g. compiled by an evaluation pass).
      progress: called with 1 after each timed or warm-up call.

    Returns:
      name -> `Timing`, in the order of `candidates`.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if not candidates:
        raise ValueError("no candidates to time")
    if untimed_before < 0:
        raise ValueError(f"untimed_before must be >= 0, got {untimed_before}")
    names = list(candidates)
    tick = progress or (lambda _: None)
    if warm_up:
        for name in names:
            _call_ms(candidates[name])  # compile and warm up
            tick(1)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            for _ in range(untimed_before):
                jax.block_until_ready(candidates[name]())
            samples[name].append(_call_ms(candidates[name]))
            tick(1)
    return {
        name: Timing(
            median_ms=float(np.median(samples[name])),
            min_ms=float(np.min(samples[name])),
            samples_ms=tuple(samples[name]),
        )
        for name in names
    }
