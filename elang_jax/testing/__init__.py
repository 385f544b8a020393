"""Test helpers shipped with the library (tolerances)."""

from elang_jax.testing._tolerances import assert_close, is_close, tolerances

__all__ = ["assert_close", "is_close", "tolerances"]
