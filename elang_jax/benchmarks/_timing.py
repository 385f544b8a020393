"""Interleaved wall-clock timing of zero-argument calls.

A ratio of two timings means something only when both sides ran in the same process,
compiled beforehand, and close together in time: on a shared machine a slow spell then hits
every candidate alike. So each candidate is called once to compile and warm up, then every
round calls each candidate once, the starting candidate rotating from round to round so
that none always runs first (or right after the same neighbour). Every call is followed by
`jax.block_until_ready`: JAX dispatches asynchronously, and a call that returns before its
result is computed would time the dispatch only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np


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


def _call(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - t0) * 1e3


def time_interleaved(
    candidates: Mapping[str, Callable[[], Any]], rounds: int, *, untimed_before: int = 0
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
    for name in names:
        _call(candidates[name])  # compile and warm up
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            for _ in range(untimed_before):
                jax.block_until_ready(candidates[name]())
            samples[name].append(_call(candidates[name]))
    return {
        name: Timing(
            median_ms=float(np.median(samples[name])),
            min_ms=float(np.min(samples[name])),
            samples_ms=tuple(samples[name]),
        )
        for name in names
    }
