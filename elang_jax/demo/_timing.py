"""Measured speed-ups: every method against Super on the same batches, interleaved.

Each method's forward has already run over the batches once (its evaluation pass compiled
every batch shape), so there is no warm-up pass: the rounds time steady-state execution.
Every round passes over the batches once per method and once for Super, the starting method
rotating (the library's one timing routine, `elang_jax.timing.time_interleaved`, through
`time_against_reference`); a method's speed-up is the median over rounds of Super's pass
over its own in the same round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from elang_jax import data
from elang_jax.demo._methods import Method
from elang_jax.timing import ReferenceTiming, reference_passes, time_against_reference


def measure(
    reference: Method,
    methods: Sequence[Method],
    batches: Sequence[data.Batch],
    rounds: int,
    bar: Callable[[int, str], Any],
) -> dict[str, ReferenceTiming]:
    """The timing of each method against `reference` (Super alone) over `batches`.

    Args:
      reference: the method every speed-up is relative to.
      methods: the others (the reference itself is left out of the rounds: its speed-up is 1
        by definition).
      batches: the padded batches of the split being reported.
      rounds: timing rounds.
      bar: `bar(total, description)` -> a progress bar with `update` and `close`.
    """
    candidates = {m.name: m.forward for m in methods if m is not reference}
    progress = bar(reference_passes(len(candidates), rounds, compiled=True), "timing")
    try:
        return time_against_reference(
            reference.forward,
            candidates,
            batches,
            rounds,
            compiled=True,
            progress=progress.update,
        )
    finally:
        progress.close()


def timing_subset(batches: Sequence[data.Batch], limit: int | None) -> list[data.Batch]:
    """`limit` batches evenly spread over `batches` (all of them when None or enough):
    length-sorted batches keep every length bucket represented."""
    if limit is None or limit >= len(batches):
        return list(batches)
    picks = np.unique(np.linspace(0, len(batches) - 1, limit).round().astype(int))
    return [batches[i] for i in picks]
