"""One place for numerical tolerances, keyed on dtype. Never loosen one to pass a test."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

_TOLERANCES = {
    jnp.dtype(jnp.float32): (1e-4, 1e-5),
    jnp.dtype(jnp.bfloat16): (2e-2, 1e-2),
    jnp.dtype(jnp.float16): (5e-3, 1e-3),
}


def tolerances(*dtypes) -> tuple[float, float]:
    """(atol, rtol) for comparing arrays of these dtypes: the loosest of them."""
    if not dtypes:
        dtypes = (jnp.float32,)
    pairs = [_TOLERANCES[jnp.dtype(d)] for d in dtypes]
    return max(a for a, _ in pairs), max(r for _, r in pairs)


def is_close(actual, expected, dtype=jnp.float32) -> bool:
    """Whether every element agrees within the tolerance of `dtype` (NaN equals NaN): the
    check as a value, for reports that must not raise (e.g. the GPU check)."""
    atol, rtol = tolerances(dtype)
    return bool(
        np.allclose(
            np.asarray(actual, np.float32),
            np.asarray(expected, np.float32),
            atol=atol,
            rtol=rtol,
            equal_nan=True,
        )
    )


def assert_close(actual, expected, dtype=jnp.float32, err_msg: str = "") -> None:
    """np.testing.assert_allclose with the tolerance of `dtype`."""
    atol, rtol = tolerances(dtype)
    np.testing.assert_allclose(
        np.asarray(actual, np.float32),
        np.asarray(expected, np.float32),
        atol=atol,
        rtol=rtol,
        err_msg=err_msg,
    )
