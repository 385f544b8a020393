"""Argument normalisation shared by every compiled step: one place, one set of messages."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool


def per_tier(inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]], n: int) -> list[Any]:
    """One inputs dict per tier: a dict is shared by all n tiers; a sequence gives each tier
    its own (tiers with different tokenizers), and must hold exactly n."""
    if isinstance(inputs, Mapping):
        return [inputs] * n
    if not isinstance(inputs, Sequence):
        raise TypeError(
            f"inputs must be a dict of arrays or one per tier, got {type(inputs).__name__}"
        )
    if len(inputs) != n:
        raise ValueError(f"need inputs for {n} tiers, got {len(inputs)}")
    return list(inputs)


def per_tier_lengths(length: int | Sequence[int], n: int) -> list[int]:
    """One padded length per tier: an int is shared by all n tiers; a sequence gives each
    tier its own (tiers with their own inputs), and must hold exactly n."""
    lengths = [length] * n if isinstance(length, int) else list(length)
    if len(lengths) != n:
        raise ValueError(f"need one length per tier ({n}), got {length}")
    return [int(t) for t in lengths]


def step_valid(valid: ArrayLike | None, batch_size: int) -> Bool[Array, " b"]:
    """[b] bool marking the real rows (all rows when None).

    Accepts bool or 0/1 integers of shape exactly [b]: a [1] or [3] array is an error,
    never broadcast.
    """
    if valid is None:
        return jnp.ones((batch_size,), bool)
    shape = tuple(np.shape(valid))
    if shape != (batch_size,):
        raise ValueError(f"valid must have shape ({batch_size},), got {shape}")
    v = np.asarray(valid)
    if v.dtype != bool:
        if not np.issubdtype(v.dtype, np.integer) or not np.isin(v, (0, 1)).all():
            raise ValueError(f"valid must hold booleans (or 0/1), got dtype {v.dtype}")
    return jnp.asarray(v, bool)


def step_thresholds(
    name: str,
    given: Sequence[float] | ArrayLike | None,
    default: Sequence[float] | ArrayLike,
    n: int,
) -> np.ndarray:
    """[n] float32 thresholds (the defaults when `given` is None); NaN is an error."""
    raw = default if given is None else given
    th = np.asarray(raw, np.float64).reshape(-1) if np.ndim(raw) <= 1 else np.asarray(raw)
    if th.shape != (n,) or np.isnan(th).any():
        raise ValueError(f"{name} must be {n} non-NaN floats, got {raw!r}")
    return th.astype(np.float32)


def step_threshold(name: str, given: float | None, default: float) -> np.float32:
    """One float threshold (the default when `given` is None); NaN is an error."""
    value = default if given is None else given
    if np.ndim(value) != 0 or math.isnan(float(value)):  # pyright: ignore[reportArgumentType]
        raise ValueError(f"{name} must be one non-NaN float, got {value!r}")
    return np.float32(value)


def step_count(
    name: str, given: float | np.integer | None, default: int, minimum: int = 1
) -> np.int32:
    """One integer >= minimum (the default when `given` is None); 1.7 is an error, not 1."""
    value = default if given is None else given
    if isinstance(value, bool) or not float(value).is_integer() or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return np.int32(int(value))
