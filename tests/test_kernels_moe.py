"""Pallas dispatch/combine kernels against their jnp references, in interpret mode on CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from elang_jax.kernels import moe_dispatch as md

from elang_jax.testing import assert_close


def _order(expert_of_assignment: np.ndarray) -> jax.Array:
    return jnp.argsort(jnp.asarray(expert_of_assignment), stable=True).astype(jnp.int32)


def _routing(kind: str, n: int, k: int, e: int, rng: np.random.RandomState) -> np.ndarray:
    """Expert of each choice-major assignment [k*n] for adversarial routings."""
    if kind == "random":
        return np.concatenate([rng.permutation(e)[:k] for _ in range(n)]).reshape(n, k).T.ravel()
    if kind == "one_expert":
        # every token's first choice is expert 0, later choices 1, 2, ...: experts >= k empty
        return np.repeat(np.arange(k), n)
    if kind == "empty_experts":
        # only the even experts are used
        used = np.arange(0, e, 2)
        return np.concatenate([rng.permutation(used)[:k] for _ in range(n)]).reshape(n, k).T.ravel()
    raise ValueError(kind)


CASES = [
    # (n, k, e, block_rows, routing): n not a multiple of the tile in most cases
    (37, 2, 5, 16, "random"),
    (37, 3, 8, 16, "empty_experts"),
    (64, 2, 4, 16, "one_expert"),
    (5, 1, 3, 8, "random"),
    (130, 2, 6, 128, "one_expert"),
    (1, 1, 1, 4, "random"),
]


@pytest.mark.parametrize("n,k,e,block,routing", CASES)
def test_dispatch_matches_reference(n, k, e, block, routing, rng):
    x = jnp.asarray(rng.randn(n, 12), jnp.float32)
    order = _order(_routing(routing, n, k, e, rng))
    got = md.dispatch(x, order, k, block_rows=block, interpret=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(md.dispatch_reference(x, order, k)))


@pytest.mark.parametrize("n,k,e,block,routing", CASES)
def test_combine_matches_reference(n, k, e, block, routing, rng):
    y = jnp.asarray(rng.randn(n * k, 12), jnp.float32)
    gates = jnp.asarray(rng.rand(n, k), jnp.float32)
    order = _order(_routing(routing, n, k, e, rng))
    got = md.combine(y, order, gates, block_rows=block, interpret=True)
    assert_close(got, md.combine_reference(y, order, gates))


@pytest.mark.parametrize("n,k,e,block,routing", CASES)
def test_gradients_match_reference(n, k, e, block, routing, rng):
    x = jnp.asarray(rng.randn(n, 12), jnp.float32)
    scale = jnp.asarray(rng.randn(n * k, 12), jnp.float32)
    gates = jnp.asarray(rng.rand(n, k), jnp.float32)
    cotangent = jnp.asarray(rng.randn(n, 12), jnp.float32)
    order = _order(_routing(routing, n, k, e, rng))

    def kernel_path(x, scale, gates):
        ys = md.dispatch(x, order, k, block_rows=block, interpret=True) * scale
        return md.combine(ys, order, gates, block_rows=block, interpret=True)

    def reference_path(x, scale, gates):
        ys = md.dispatch_reference(x, order, k) * scale
        return md.combine_reference(ys, order, gates)

    out, vjp = jax.vjp(kernel_path, x, scale, gates)
    ref_out, ref_vjp = jax.vjp(reference_path, x, scale, gates)
    assert_close(out, ref_out)
    for got, want in zip(vjp(cotangent), ref_vjp(cotangent), strict=True):
        assert_close(got, want)


def test_combine_zero_gate_drops_the_row(rng):
    n, k = 9, 2
    y = jnp.asarray(rng.randn(n * k, 4), jnp.float32)
    order = _order(_routing("random", n, k, 3, rng))
    gates = jnp.ones((n, k)).at[:, 1].set(0.0)
    got = md.combine(y, order, gates, block_rows=4, interpret=True)
    # only the first choices survive: the output is their rows, in token order
    slot = np.asarray(md.inverse_order(order))[:n]
    np.testing.assert_allclose(np.asarray(got), np.asarray(y)[slot], rtol=0, atol=0)


def test_bad_inputs_raise_clear_errors():
    x = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="order must have shape \\[8\\]"):
        md.dispatch(x, jnp.arange(6), 2, interpret=True)
    with pytest.raises(TypeError, match="integers"):
        md.dispatch(x, jnp.zeros(8), 2, interpret=True)
    with pytest.raises(ValueError, match="k must be >= 1"):
        md.dispatch(x, jnp.arange(0), 0, interpret=True)
    with pytest.raises(ValueError, match="n\\*k = 8 rows"):
        md.combine(jnp.zeros((7, 3)), jnp.arange(8), jnp.ones((4, 2)), interpret=True)
    with pytest.raises(ValueError, match="shape \\[n, d\\]"):
        md.dispatch(jnp.zeros(4), jnp.arange(4), 1, interpret=True)
