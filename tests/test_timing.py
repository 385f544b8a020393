"""`elang_jax.timing`: the one interleaved timing routine and the helpers around it."""

from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
import pytest

from elang_jax import engine, timing
from elang_jax.timing import (
    GroupedTiming,
    Timing,
    over_batches,
    paired_speedups,
    time_interleaved,
)


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


class _Candidate:
    """A batch function that holds 100 fake memory maps while it lives."""

    live: set[int] = set()

    def __init__(self):
        _Candidate.live.add(id(self))

    def __del__(self):
        _Candidate.live.discard(id(self))

    def __call__(self, batch):
        return batch


def test_grouped_timing_splits_at_the_map_share():
    calls = []

    def reference(batch):
        calls.append(batch)
        return batch

    def maps():  # 200 maps of the process, 100 per live candidate, a cap of 1,000
        return 200 + 100 * len(_Candidate.live), 1000

    timer = GroupedTiming(reference, [0, 1], rounds=2, max_share=0.75, maps=maps)
    refs = []
    for name in "abcdefg":
        fn = _Candidate()
        refs.append(weakref.ref(fn))
        timer.add(name, fn)
        del fn
        timer.make_room()
    # With "e" the process holds 700 maps; one more like the largest (100) passes 750.
    assert timer.groups == [tuple("abcde")]
    assert [r() is None for r in refs] == [True] * 5 + [False] * 2  # released with the group
    out = timer.results()
    assert timer.groups == [tuple("abcde"), ("f", "g")] and list(out) == list("abcdefg")
    assert all(r() is None for r in refs)
    assert len(calls) == 2 * 2 * 2  # two groups, two rounds each, over two batches
    assert all(t.speedup > 0 and len(t.rounds) == 2 for t in out.values())
    assert timer.peak_maps == (700, 1000)
    with pytest.raises(ValueError, match="added twice"):
        timer.add("a", _Candidate())
    with pytest.raises(ValueError, match="max_share"):
        GroupedTiming(reference, [0], rounds=1, max_share=0.0)


def test_grouped_timing_without_a_cap_is_one_group():
    timer = GroupedTiming(lambda b: b, [0], rounds=1, maps=lambda: None)
    for name in "abc":
        timer.add(name, lambda b: b)
    assert list(timer.results()) == list("abc") and timer.groups == [tuple("abc")]
    assert timer.peak_maps is None


@pytest.mark.skipif(engine.memory_maps() is None, reason="reads Linux's /proc")
def test_grouped_timing_releases_compiled_programs():
    def make(k: float):
        @jax.jit
        def f(x):
            for i in range(40):  # enough kernels to see in the process's maps
                x = jnp.tanh(x @ x.T + i * k) * 0.5 + jnp.sin(x)
            return x

        return f

    x = jnp.ones((8, 8))
    timer = GroupedTiming(make(0.0), [x], rounds=1, max_share=1e-9)
    before = engine.memory_maps()
    assert before is not None
    fn = make(1.0)
    fn(x).block_until_ready()
    compiled = engine.memory_maps()
    assert compiled is not None and compiled[0] > before[0]
    probe = weakref.ref(fn)
    timer.add("one", fn)
    del fn
    timer.make_room()  # a group of its own: timed and released at once
    assert timer.groups == [("one",)] and probe() is None
    after = engine.memory_maps()
    assert after is not None and after[0] < compiled[0]
