"""Wall-clock timing of compiled work, side by side: one routine, `time_interleaved`.

Every timing in the library goes through it: `elang-jax bench`, the eval/ drivers and the
demo. It times zero-argument calls; `over_batches(fn, batches)` makes one pass of a batch
function over padded batches such a call, and `time_against_reference` (the demo's) is
`time_interleaved` over such passes plus the per-round ratios to a reference
(`paired_speedups`).

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
import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from elang_jax.data import Batch

log = logging.getLogger(__name__)
BatchFn = Callable[[Batch], Any]


def batch_inputs(batch: Batch) -> dict[str, Int[np.ndarray | Array, "b t"]]:
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


# ----------------------------------------------------------------------------------------------
# The routine: zero-argument calls, side by side


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
        cold (up to +15 ms measured after `ragged_dot`, the MoE benchmark); long calls do
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


# ----------------------------------------------------------------------------------------------
# Helpers around the routine


def over_batches(fn: Callable[[Any], Any], batches: Sequence[Any]) -> Callable[[], list[Any]]:
    """One pass of `fn` over `batches` (padded `Batch`es, or input dicts already on the
    device) as a zero-argument call for `time_interleaved`.

    The outputs of the whole pass are returned together, so `jax.block_until_ready` waits
    for the last batch; the batches keep being dispatched while earlier ones compute, as a
    serving loop would.
    """
    if not batches:
        raise ValueError("no batches to time")
    batches = list(batches)
    return lambda: [fn(b) for b in batches]


def paired_speedups(reference: Timing, candidate: Timing) -> tuple[float, ...]:
    """Per-round speed-ups, the reference's call over the candidate's in the same round.

    Both timings must come from the same `time_interleaved` run: a round's two calls ran
    close together, so a slow spell of a shared machine hits both, and the median of these
    ratios is steadier than the ratio of the medians.
    """
    ref, own = reference.samples_ms, candidate.samples_ms
    if len(ref) != len(own):
        raise ValueError(f"{len(ref)} reference rounds against {len(own)} candidate rounds")
    return tuple(a / max(b, 1e-9) for a, b in zip(ref, own, strict=True))


# ----------------------------------------------------------------------------------------------
# Batch functions against a reference (the demo)


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
    batches: Sequence[Any],  # whatever the functions take: padded `Batch`es, input dicts
    rounds: int,
    *,
    compiled: bool = False,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, ReferenceTiming]:
    """Times several functions against one reference over the same batches, interleaved.

    A thin layer over `time_interleaved`, one call being a pass over `batches`: every round
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
    key = "\0reference"  # cannot clash with a candidate's name
    calls = {key: over_batches(reference, batches)}
    calls |= {n: over_batches(f, batches) for n, f in candidates.items()}
    timings = time_interleaved(calls, rounds, warm_up=not compiled, progress=progress)
    out = {}
    for name in candidates:
        ratios = paired_speedups(timings[key], timings[name])
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
# Many large candidates: timed in groups whose programs are released


class GroupedTiming:
    """`time_against_reference` for more compiled candidates than one process can hold.

    XLA:CPU maps every kernel of a program into memory on its own, and Linux caps a
    process's maps (`elang_jax.engine.memory_maps`; beyond it LLVM aborts the process). A
    job with many large steps (a serving step per method, each compiled for every length
    bucket) therefore hands each candidate over as soon as it has compiled it, keeping no
    reference of its own, and makes room before compiling the next:

        for name, build in builders.items():
            fn = build()  # compiled for every batch shape
            timer.add(name, fn)
            del fn
            timer.make_room()
        timings = timer.results()

    When the maps held, plus those of one more candidate as large as the largest so far,
    would pass `max_share` of the cap, `make_room` times the pending group against the
    reference and drops it, which frees its programs. Every group times the reference
    anew and each candidate's speed-up is over the reference of its own rounds, so groups
    timed minutes apart still compare. Without a cap to read (off Linux) everything is
    one group. The rule knows only the candidates seen so far: before compiling one much
    larger (the pair's composed steps after its cascade steps), call `flush` yourself.

    Args:
      reference: the baseline `fn(batch)`, compiled for every batch shape; kept throughout.
      batches: the batches every side is timed on.
      rounds: timing rounds per group.
      max_share: share of the map cap a group may fill.
      maps: returns (maps held, cap) or None (tests inject their own).
    """

    def __init__(
        self,
        reference: BatchFn,
        batches: Sequence[Any],
        rounds: int,
        *,
        max_share: float = 0.75,
        maps: Callable[[], tuple[int, int] | None] | None = None,
    ):
        if not 0.0 < max_share <= 1.0:
            raise ValueError(f"max_share must be in (0, 1], got {max_share}")
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        from elang_jax.engine import memory_maps  # the engine imports models: not at load

        self._reference = reference
        self._batches = list(batches)
        self._rounds = rounds
        self._max_share = max_share
        self._maps = maps or memory_maps
        self._pending: dict[str, BatchFn] = {}
        self._results: dict[str, ReferenceTiming] = {}
        #: the candidates of each group, in timing order
        self.groups: list[tuple[str, ...]] = []
        #: the most maps held when a candidate was added (None: no cap to read)
        self.peak_maps: tuple[int, int] | None = None
        m = self._read()
        self._held = None if m is None else m[0]
        self._largest = 0

    def _read(self) -> tuple[int, int] | None:
        m = self._maps()
        if m is not None and (self.peak_maps is None or m[0] > self.peak_maps[0]):
            self.peak_maps = m
        return m

    def add(self, name: str, fn: BatchFn) -> None:
        """Queues a candidate already compiled for every batch shape; the caller then
        drops its own references to it (see the class docstring)."""
        if name in self._pending or name in self._results:
            raise ValueError(f"candidate {name!r} added twice")
        self._pending[name] = fn
        gc.collect()  # what compiling it left behind (e.g. calibration passes) goes first
        m = self._read()
        if m is None or self._held is None:
            return
        self._largest = max(self._largest, m[0] - self._held)
        self._held = m[0]

    def make_room(self) -> None:
        """Times and releases the pending group if one more candidate as large as the
        largest so far might not fit under `max_share` of the map cap."""
        m = self._read()
        if m is not None and m[0] + self._largest > self._max_share * m[1]:
            self.flush()

    def flush(self) -> None:
        """Times the pending candidates against the reference and releases them."""
        if not self._pending:
            return
        names = tuple(self._pending)
        log.info("timing a group of %d against the reference: %s", len(names), ", ".join(names))
        self._results |= time_against_reference(
            self._reference, self._pending, self._batches, self._rounds, compiled=True
        )
        self.groups.append(names)
        self._pending.clear()
        gc.collect()  # the pending steps' programs go with their last references
        m = self._read()
        if m is not None and self._held is not None:
            log.info("released %d memory maps", self._held - m[0])
            self._held = m[0]

    def results(self) -> dict[str, ReferenceTiming]:
        """Every candidate's timing, in the order added (times the last group first)."""
        self.flush()
        return dict(self._results)
