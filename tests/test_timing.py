"""`elang_jax.timing`: the one interleaved timing routine and the helpers around it."""

from __future__ import annotations

import pytest

from elang_jax import timing
from elang_jax.timing import Timing, over_batches, paired_speedups, time_interleaved


def test_no_other_timing_procedure_is_left():
    # One routine: the older per-pass helpers are gone.
    for name in ("time_pair", "time_total", "warm_up"):
        assert not hasattr(timing, name)


def test_options_warm_up_untimed_and_progress():
    calls, ticks = [], []
    fns = {n: (lambda n=n: calls.append(n)) for n in "ab"}
    out = time_interleaved(fns, rounds=2, warm_up=False, untimed_before=2, progress=ticks.append)
    # No warm-up call; each timed call after two untimed ones; round 1 starts with "b".
    assert calls == list("aaa") + list("bbb") + list("bbb") + list("aaa")
    assert len(ticks) == 4 and list(out) == ["a", "b"]
    with pytest.raises(ValueError, match="untimed_before"):
        time_interleaved(fns, rounds=1, untimed_before=-1)


def test_over_batches_is_one_pass():
    seen = []
    call = over_batches(lambda b: seen.append(b) or b, [1, 2, 3])
    assert call() == [1, 2, 3] and seen == [1, 2, 3]
    with pytest.raises(ValueError, match="no batches"):
        over_batches(lambda b: b, [])


def test_paired_speedups():
    ref = Timing(median_ms=10.0, min_ms=8.0, samples_ms=(8.0, 12.0))
    fast = Timing(median_ms=5.0, min_ms=4.0, samples_ms=(4.0, 6.0))
    assert paired_speedups(ref, fast) == pytest.approx((2.0, 2.0))
    with pytest.raises(ValueError, match="rounds"):
        paired_speedups(ref, Timing(median_ms=1.0, min_ms=1.0, samples_ms=(1.0,)))
