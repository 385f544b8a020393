"""Pallas kernels, installed as `elang_jax.kernels`.

Each kernel sits next to a pure-jnp reference with the same signature, is tested against it
in interpret mode on CPU, and is selected by a config enum whose default is pure JAX.
"""

__all__: list[str] = []
