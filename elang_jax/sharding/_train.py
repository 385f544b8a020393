"""The training step on a mesh, and orbax checkpoints that restore onto any other mesh.

Nothing of the training loop is copied: `make_sharded_train_step` wraps the step that
`elang_jax.training.make_train_step` builds in a `jax.jit` whose outputs keep the
parameters' and the optimizer state's placements. Batches are split by rows over the batch
axes (data parallel); parameters by the rules (tensor / expert parallel where they are
large); GSPMD inserts the gradient all-reduce over "data". Optimizer moments follow their
parameter's placement.

Checkpoints: orbax writes every shard of a global array; `restore_train_state` reads them
back into whatever placement it is given, so a state saved on a (data=4, model=2) mesh
restores onto 2 devices or 8 data shards with identical values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from elang_jax.sharding._rules import (
    LOGICAL_AXIS_RULES,
    Rules,
    batch_sharding,
    key_names,
    state_shardings,
)
from elang_jax.training import ForwardHook, LossHook, make_train_step


@dataclasses.dataclass(frozen=True)
class TrainShardings:
    """Placements of a split model's training state on one mesh.

    Attributes:
      mesh: the mesh.
      params: a `NamedSharding` per parameter (a prefix tree of the parameter state).
      rest: the same for the non-parameter state (replicated).
      opt_state: a `NamedSharding` per optimizer-state leaf: a moment of a parameter takes
        that parameter's placement, anything else (step counts) is replicated.
    """

    mesh: Mesh
    params: Any
    rest: Any
    opt_state: Any


def train_shardings(
    params: nnx.State,
    rest: nnx.State,
    opt_state: Any,
    mesh: Mesh,
    rules: Rules = LOGICAL_AXIS_RULES,
    *,
    min_elements: int = 0,
) -> TrainShardings:
    """Placements for `nnx.split(model, nnx.Param, ...)`'s parts and `optimizer.init(params)`.

    Any of them may be abstract (`jax.ShapeDtypeStruct` leaves, e.g. from `nnx.eval_shape`
    and `jax.eval_shape`), so a restore never has to build the state first.
    """
    params_sh = state_shardings(params, mesh, rules, min_elements=min_elements)
    rest_sh = state_shardings(rest, mesh, rules)
    by_path: dict[tuple[Any, ...], NamedSharding] = {}
    for path, sharding in jax.tree_util.tree_flatten_with_path(params_sh)[0]:
        by_path[key_names(path)] = sharding
    lengths = sorted({len(k) for k in by_path}, reverse=True)
    replicated = NamedSharding(mesh, PartitionSpec())

    def place(path, leaf) -> NamedSharding:
        keys = key_names(path)
        for n in lengths:
            if len(keys) >= n and keys[-n:] in by_path:
                sharding = by_path[keys[-n:]]
                # a moment has its parameter's shape; anything else of that name does not
                if len(getattr(leaf, "shape", ())) == len(sharding.spec) or not sharding.spec:
                    return sharding
        return replicated

    opt_sh = jax.tree_util.tree_map_with_path(place, opt_state)
    return TrainShardings(mesh=mesh, params=params_sh, rest=rest_sh, opt_state=opt_sh)


def shard_train_state(
    params: nnx.State, rest: nnx.State, opt_state: Any, shardings: TrainShardings
) -> tuple[nnx.State, nnx.State, Any]:
    """`jax.device_put` of the three parts into their placements."""
    return (
        jax.device_put(params, shardings.params),
        jax.device_put(rest, shardings.rest),
        jax.device_put(opt_state, shardings.opt_state),
    )


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Every array of a training batch split by rows over the batch axes (data parallel).

    Raises:
      ValueError: an array whose rows the batch axes do not divide.
    """
    out = {}
    for name, value in batch.items():
        array = np.asarray(value)
        sharding = batch_sharding(mesh, max(array.ndim, 1))
        shards = sharding.num_devices // _replicas(sharding)
        if array.ndim == 0 or array.shape[0] % shards:
            raise ValueError(
                f"batch[{name!r}] has shape {array.shape}: its rows must divide evenly over "
                f"the {shards} batch shards of the mesh"
            )
        out[name] = jax.device_put(array, sharding)
    return out


def _replicas(sharding: NamedSharding) -> int:
    # How many devices hold the same rows (the mesh axes the batch is not split over).
    split = 1
    for axes in sharding.spec:
        for axis in (axes,) if isinstance(axes, str) else axes or ():
            split *= sharding.mesh.shape[axis]
    return sharding.num_devices // split


def make_sharded_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    dropout_key: jax.Array,
    shardings: TrainShardings,
    *,
    loss: LossHook | None = None,
    forward: ForwardHook | None = None,
):
    """`elang_jax.training.make_train_step` on a mesh.

    Same signature and results as that step (`step_fn(params, rest, opt_state, batch, step,
    variant=None) -> (params, opt_state, metrics)`); the new parameters and optimizer state
    keep the placements of `shardings`, the metrics come back replicated. Give it state
    placed by `shard_train_state` and batches from `shard_batch`.
    """
    step = make_train_step(graphdef, optimizer, dropout_key, loss=loss, forward=forward)
    replicated = NamedSharding(shardings.mesh, PartitionSpec())

    def sharded(params, rest, opt_state, batch, step_index, variant: Hashable = None):
        return step(params, rest, opt_state, batch, step_index, variant)

    return jax.jit(
        sharded,
        static_argnames="variant",
        out_shardings=(shardings.params, shardings.opt_state, replicated),
    )


def save_train_state(
    manager: ocp.CheckpointManager,
    step: int,
    params: nnx.State,
    opt_state: Any,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Writes the (sharded) parameters and optimizer state as checkpoint `step`.

    The layout is `elang_jax.training`'s (`params`, `opt_state`, `meta` items), so its loop
    and these functions read each other's checkpoints.
    """
    manager.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave({"step": step, **(meta or {})}),
        ),
    )


@dataclasses.dataclass(frozen=True)
class RestoredState:
    """What `restore_train_state` read: the state in its new placements, and the metadata."""

    params: nnx.State
    opt_state: Any
    meta: dict[str, Any]


def restore_train_state(
    manager: ocp.CheckpointManager,
    step: int,
    params: Any,
    opt_state: Any,
    shardings: TrainShardings,
) -> RestoredState:
    """Reads checkpoint `step` straight into the placements of `shardings` (any mesh).

    Args:
      params, opt_state: the state's structure, shapes and dtypes (concrete or abstract).
      shardings: the target placements (`train_shardings` on the target mesh).
    """

    def target(leaf, sharding):
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    abstract_params = jax.tree.map(target, params, shardings.params)
    abstract_opt = jax.tree.map(target, opt_state, shardings.opt_state)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_params),
            opt_state=ocp.args.StandardRestore(abstract_opt),
            meta=ocp.args.JsonRestore(),
        ),
    )
    return RestoredState(restored["params"], restored["opt_state"], dict(restored["meta"]))


@dataclasses.dataclass(frozen=True)
class MeshTraining:
    """A split model's training state placed on a mesh, its step, and its batch placer
    (what `elang_jax.training.train_and_evaluate(..., mesh=)` runs with)."""

    params: nnx.State
    rest: nnx.State
    opt_state: Any
    step_fn: Any
    put_batch: Any
    shardings: TrainShardings


def train_on_mesh(
    mesh: Mesh,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    rest: nnx.State,
    optimizer: optax.GradientTransformation,
    dropout_key: jax.Array,
    *,
    loss: LossHook | None = None,
    forward: ForwardHook | None = None,
    min_elements: int = 0,
) -> MeshTraining:
    """Places a fresh training state on `mesh` and builds its sharded step."""
    opt_state = optimizer.init(params)
    shardings = train_shardings(params, rest, opt_state, mesh, min_elements=min_elements)
    params, rest, opt_state = shard_train_state(params, rest, opt_state, shardings)
    step_fn = make_sharded_train_step(
        graphdef, optimizer, dropout_key, shardings, loss=loss, forward=forward
    )

    def put_batch(batch: Mapping[str, Any]) -> dict[str, jax.Array]:
        return shard_batch(batch, mesh)

    return MeshTraining(params, rest, opt_state, step_fn, put_batch, shardings)
