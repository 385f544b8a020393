"""The compaction core: exact results, smallest bucket, skipping, batch invariance."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elang_jax.core import bucket_sizes, compact_apply, plan

W = jax.random.normal(jax.random.key(0), (5, 3))


def _fn(inputs, valid):
    x, y = inputs
    return {"a": jnp.tanh(x @ W) + y[:, None], "b": (x.sum(-1) > 0).astype(jnp.int32)}


def _default(b):
    return {"a": jnp.full((b, 3), -7.0), "b": jnp.full((b,), -1, jnp.int32)}


def test_bucket_sizes():
    assert bucket_sizes(64) == (0, 8, 16, 32, 64)
    assert bucket_sizes(10) == (0, 2, 3, 5, 10)
    assert bucket_sizes(1) == (0, 1)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        bucket_sizes(8, (0.5, 1.5))
    with pytest.raises(ValueError, match="batch must be >= 1"):
        bucket_sizes(0)


def test_plan_validates_buckets():
    with pytest.raises(ValueError, match="largest bucket must equal the batch size 4"):
        plan(jnp.ones(4, bool), (0, 2))
    with pytest.raises(ValueError, match="strictly increasing"):
        plan(jnp.ones(4, bool), (0, 2, 2, 4))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16).flatmap(lambda b: st.lists(st.booleans(), min_size=b, max_size=b)))
def test_outputs_equal_masked_reference(route):
    b = len(route)
    rng = np.random.RandomState(b)
    x = jnp.asarray(rng.randn(b, 5), jnp.float32)
    y = jnp.asarray(rng.randn(b), jnp.float32)
    r = jnp.asarray(route)
    buckets = bucket_sizes(b)
    out, packing = jax.jit(compact_apply, static_argnums=(0, 4))(
        _fn, r, (x, y), _default(b), buckets
    )
    full = _fn((x, y), None)
    expect_a = np.where(np.asarray(route)[:, None], np.asarray(full["a"]), -7.0)
    expect_b = np.where(np.asarray(route), np.asarray(full["b"]), -1)
    np.testing.assert_allclose(out["a"], expect_a, atol=1e-6)
    np.testing.assert_array_equal(out["b"], expect_b)
    # The smallest bucket that holds the routed examples was used.
    n = int(np.sum(route))
    assert buckets[int(packing.bucket)] == min(s for s in buckets if s >= n)
    # Routed examples come first, in batch order.
    np.testing.assert_array_equal(np.asarray(packing.order)[:n], np.flatnonzero(route))


def test_empty_bucket_runs_nothing():
    calls = []

    def fn(inputs, valid):
        jax.debug.callback(lambda: calls.append(1))
        return inputs * 2

    x = jnp.arange(8.0)
    f = jax.jit(lambda r: compact_apply(fn, r, x, -x, bucket_sizes(8))[0])
    np.testing.assert_array_equal(f(jnp.zeros(8, bool)), -np.arange(8.0))
    jax.effects_barrier()
    assert calls == []
    f(jnp.ones(8, bool)).block_until_ready()
    jax.effects_barrier()
    assert calls == [1]


def test_fn_sees_bucket_shape_and_valid_rows():
    seen = []

    def fn(inputs, valid):
        seen.append((inputs.shape[0], valid.shape[0]))
        return inputs

    route = jnp.array([1, 0, 0, 1, 0, 0, 0, 0], bool)
    compact_apply(fn, route, jnp.arange(8.0), jnp.zeros(8), bucket_sizes(8))
    # lax.switch traces every branch once: one per non-empty bucket size.
    assert sorted(seen) == [(1, 1), (2, 2), (4, 4), (8, 8)]
