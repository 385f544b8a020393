"""Sharded loading: build the model abstractly, put each checkpoint tensor into its shard.

No device ever holds a parameter it does not own a shard of: the model is built with
`nnx.eval_shape` (no arrays), each converted tensor goes from host memory straight to its
`NamedSharding` with `jax.device_put`, and whatever the checkpoint lacks (a new
classification head) is initialised by one jitted function whose outputs are already
sharded. Used by `elang_jax.hf.from_pretrained(..., mesh=)`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from elang_jax.sharding._rules import LOGICAL_AXIS_RULES, Rules, param_shardings

Path = tuple[str | int, ...]


class ShardedLoader:
    """An abstract model and the placement of each of its variables on a mesh.

    `place` is `elang_jax.hf`'s `load_into` hook; `finish` initialises, already sharded,
    whatever the checkpoint did not fill.
    """

    def __init__(
        self,
        build: Callable[[], nnx.Module],
        mesh: Mesh,
        rules: Rules = LOGICAL_AXIS_RULES,
        *,
        min_elements: int = 0,
    ):
        self.build = build
        self.model = nnx.eval_shape(build)
        shardings = param_shardings(self.model, mesh, rules, min_elements=min_elements)
        self.shardings = shardings
        self.by_path: dict[Any, NamedSharding] = {
            path: var.get_value() for path, var in nnx.to_flat_state(shardings)
        }

    def place(self, path: Path, value: np.ndarray, var: nnx.Variable) -> jax.Array:
        return jax.device_put(np.asarray(value, dtype=var.dtype), self.by_path[path])

    def finish(self) -> nnx.Module:
        """Fills the variables the checkpoint left abstract, and returns the model."""
        flat = nnx.to_flat_state(nnx.state(self.model))
        left = [path for path, var in flat if isinstance(var.get_value(), jax.ShapeDtypeStruct)]
        if left:
            # One sharded initialisation of the whole model: each device computes only its
            # shards (the outputs' placements), and only the missing variables are kept.
            def init() -> nnx.State:
                return nnx.state(self.build())

            fresh = dict(nnx.to_flat_state(jax.jit(init, out_shardings=self.shardings)()))
            for path, var in flat:
                if path in left:
                    var.set_value(fresh[path].get_value())
            nnx.update(self.model, nnx.from_flat_state(flat))
        return self.model


def from_pretrained(
    path_or_name: str | os.PathLike,
    head: str | None = None,
    *,
    mesh: Mesh,
    rules: Rules = LOGICAL_AXIS_RULES,
    **kwargs: Any,
) -> nnx.Module:
    """`elang_jax.hf.from_pretrained` straight onto `mesh` (see `ShardedLoader`)."""
    from elang_jax.hf import from_pretrained as hf_from_pretrained

    return hf_from_pretrained(path_or_name, head, mesh=mesh, rules=rules, **kwargs)
