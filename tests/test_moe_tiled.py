"""The TILED MoE implementation against the dense-masked reference: forward and gradient on
random and adversarial routings, batch invariance, its cost bound, jit and retracing."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elang_jax.models._common import activation_fn
from elang_jax.moe import MoEConfig, MoEImpl, _experts
from elang_jax.moe._routing import plan
from elang_jax.moe._tiled import tile_table
from elang_jax.testing import assert_close

D, F = 8, 6  # width, expert width
ROUTINGS = ("random", "one_expert", "empty_experts", "all_experts")


def _routing(kind: str, n: int, k: int, e: int, rng: np.random.RandomState) -> np.ndarray:
    """[n k] distinct experts per token (as top-k routing gives)."""
    if kind == "random":
        return np.stack([rng.permutation(e)[:k] for _ in range(n)])
    if kind == "one_expert":
        # every first choice on expert 0, second choices on 1, ...: experts >= k empty
        return np.tile(np.arange(k), (n, 1))
    if kind == "empty_experts":
        # only the even experts are used (k of them at most)
        used = np.arange(0, e, 2)
        return np.stack([rng.permutation(used)[:k] for _ in range(n)])
    if kind == "all_experts":  # top_k = E
        return np.stack([rng.permutation(e) for _ in range(n)])[:, :k]
    raise ValueError(kind)


def _weights(e: int, seed: int = 0) -> _experts.ExpertWeights:
    keys = jax.random.split(jax.random.key(seed), 3)
    return _experts.ExpertWeights(
        jax.random.normal(keys[0], (e, D, F)),
        0.1 * jax.random.normal(keys[1], (e, F)),
        jax.random.normal(keys[2], (e, F, D)) / np.sqrt(F),
    )


@functools.cache
def _grad(impl: MoEImpl, config: MoEConfig):
    """A jitted gradient of sum(sin(run(...))) in x, gates and the weights."""

    def loss(x, ids, gates, w):
        return jnp.sum(jnp.sin(_runner(impl, config)(x, ids, gates, w)))

    return jax.jit(jax.grad(loss, argnums=(0, 2, 3)))


@functools.cache
def _runner(impl: MoEImpl, config: MoEConfig):
    """A jitted run(x, ids, gates, weights), one per (impl, config): the tests share it."""
    act = activation_fn("relu")

    def fn(x, ids, gates, w):
        return _experts.run(impl, x, ids, gates, plan(ids, config.num_experts), w, act, config)

    return jax.jit(fn)


def _case(kind, n, k, e, seed):
    rng = np.random.RandomState(seed)
    ids = jnp.asarray(_routing(kind, n, k if kind != "all_experts" else e, e, rng), jnp.int32)
    k = ids.shape[1]
    x = jnp.asarray(rng.randn(n, D), jnp.float32)
    gates = jnp.asarray(rng.uniform(0.1, 1.0, (n, k)), jnp.float32)
    return x, ids, gates, MoEConfig(num_experts=e, top_k=k, tile_rows=4)


# Few shapes, many routings: every shape compiles once per implementation.
@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(ROUTINGS), n=st.sampled_from([1, 24]), seed=st.integers(0, 2**16))
def test_forward_equals_reference(kind, n, seed):
    x, ids, gates, config = _case(kind, n, 2, 4, seed)
    w = _weights(4)
    got = _runner(MoEImpl.TILED, config)(x, ids, gates, w)
    assert_close(got, _runner(MoEImpl.DENSE, config)(x, ids, gates, w))


@pytest.mark.parametrize("kind", ROUTINGS)
def test_gradient_equals_reference(kind):
    x, ids, gates, config = _case(kind, 13, 2, 4, seed=1)
    w = _weights(4)
    want = _grad(MoEImpl.DENSE, config)(x, ids, gates, w)
    got = _grad(MoEImpl.TILED, config)(x, ids, gates, w)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert_close(g, r)


@settings(max_examples=15, deadline=None)
@given(
    kind=st.sampled_from(ROUTINGS),
    other=st.sampled_from(ROUTINGS[:3]),
    seed=st.integers(0, 2**16),
    row=st.integers(0, 23),
)
def test_a_row_does_not_depend_on_its_neighbours(kind, other, seed, row):
    # Same batch size, same row (input, experts, gates); every other row and its routing
    # redrawn, adversarial routings included: the row's output is the same, up to float
    # rounding (~1 ulp: its neighbours decide whether an assignment runs in the main buffer
    # or in a tile, matmuls of other shapes). Nothing is dropped, whatever the load.
    x, ids, gates, config = _case(kind, 24, 2, 4, seed)
    # top_k = E leaves the neighbours no other routing than every expert
    x2, ids2, gates2, _ = _case(
        "all_experts" if kind == "all_experts" else other, 24, 2, 4, seed + 1
    )
    x2, ids2, gates2 = (a.at[row].set(b[row]) for a, b in ((x2, x), (ids2, ids), (gates2, gates)))
    run = _runner(MoEImpl.TILED, config)
    w = _weights(4)
    assert_close(run(x, ids, gates, w)[row], run(x2, ids2, gates2, w)[row])


@pytest.mark.parametrize("kind", ROUTINGS)
@pytest.mark.parametrize("n,e,tile_rows", [(24, 4, 4), (5, 3, 1)])
def test_cost_follows_the_load(kind, n, e, tile_rows):
    # Rows run: E C0 in the main buffer, then exactly the used overflow tiles; at most
    # E C0 + (m - C0) + E (T - 1) on every routing, adversarial ones included.
    rng = np.random.RandomState(0)
    ids = jnp.asarray(_routing(kind, n, 2 if kind != "all_experts" else e, e, rng), jnp.int32)
    k = ids.shape[1]
    config = MoEConfig(num_experts=e, top_k=k, tile_rows=tile_rows)
    m = n * k
    main, t = config.tiled_sizes(n)
    sizes = np.bincount(np.asarray(ids).ravel(), minlength=e)
    over = np.maximum(sizes - main, 0)
    starts = np.cumsum(sizes) - sizes + main
    table = jax.jit(tile_table, static_argnums=(2, 3))
    _, _, limits = table(jnp.asarray(over), jnp.asarray(starts), max(m - main, 1), t)
    tiled = int((limits > 0).sum()) * t
    assert tiled == t * int(np.sum(-(-over // t)))  # exactly the used tiles run
    assert over.sum() <= tiled <= over.sum() + e * (t - 1)
    assert e * main + tiled <= e * main + (m - main) + e * (t - 1)
    if kind == "one_expert":  # CAPACITY would size all E experts by the busiest (n rows)
        assert e * main + tiled < e * n or e == k


class TestJitAndTraces(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree_with_the_reference(self):
        x, ids, gates, config = _case("empty_experts", 11, 2, 4, seed=3)
        w = _weights(4)
        act = activation_fn("relu")

        def fn(x, ids, gates, w):
            p = plan(ids, 4)
            return _experts.run(MoEImpl.TILED, x, ids, gates, p, w, act, config)

        want = _runner(MoEImpl.DENSE, config)(x, ids, gates, w)
        assert_close(self.variant(fn)(x, ids, gates, w), want)

    def test_a_changing_load_does_not_retrace(self):
        config = MoEConfig(num_experts=4, top_k=2, tile_rows=4)
        act = activation_fn("relu")
        w = _weights(4)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def fn(x, ids, gates):
            p = plan(ids, 4)
            return _experts.run(MoEImpl.TILED, x, ids, gates, p, w, act, config)

        for kind in ROUTINGS[:3]:  # balanced, all on one expert, half the experts empty
            x, ids, gates, _ = _case(kind, 16, 2, 4, seed=0)
            fn(x, ids, gates)


def test_capacity_factor_caps_the_tiles():
    # With a capacity factor the dropped assignments (gate 0) are not run, and the output
    # still equals the reference's, which weights them 0.
    x, ids, gates, config = _case("one_expert", 16, 2, 4, seed=0)
    config = config.replace(capacity_factor=1.0)
    # the drop rule by hand: an expert keeps its first C assignments in choice-major order
    flat = np.asarray(ids).T.ravel()
    rank = np.array([np.sum(flat[:a] == flat[a]) for a in range(flat.size)])
    gates = gates * jnp.asarray(rank < config.capacity(16)).reshape(2, 16).T
    w = _weights(4)
    got = _runner(MoEImpl.TILED, config)(x, ids, gates, w)
    assert_close(got, _runner(MoEImpl.DENSE, config)(x, ids, gates, w))


def test_tile_size_and_config_errors():
    config = MoEConfig(num_experts=8, top_k=2)
    assert config.impl is MoEImpl.TILED  # the default
    assert config.tile_size(4096) == 128  # tile_rows
    assert config.tile_size(64) == 4  # a quarter of the mean load 16
    assert config.tile_size(1) == 1
    assert config.tiled_sizes(4096) == (768, 128)  # 0.75x the mean load 1024
    with pytest.raises(ValueError, match="tile_rows must be a positive int"):
        MoEConfig(num_experts=4, top_k=2, tile_rows=0)
    with pytest.raises(ValueError, match="tiled_main must be a positive finite"):
        MoEConfig(num_experts=4, top_k=2, tiled_main=float("nan"))


@pytest.mark.parametrize("impl", [MoEImpl.CAPACITY, MoEImpl.TILED])
@pytest.mark.parametrize("kind", ["random", "one_expert"])
def test_a_non_finite_row_stays_in_its_own_output(impl, kind):
    """A NaN token must not leak into the others: assignments outside a pass read another
    token's slot, and a zero gate alone would still give 0 * NaN = NaN."""
    x, ids, gates, config = _case(kind, 40, 2, 4, 0)
    run = _runner(impl, config)
    bad = x.at[0].set(jnp.nan)
    want, got = run(x, ids, gates, _weights(4)), run(bad, ids, gates, _weights(4))
    assert bool(jnp.isnan(got[0]).all())
    assert_close(got[1:], want[1:])
