"""Scale-out through `jax.sharding`: one mesh, one rules table, sharded models and training.

* `make_mesh(data=, model=, expert=)`: a `Mesh` with axes ("data", "expert", "model").
* `LOGICAL_AXIS_RULES` and `PARAM_AXES`: every backbone parameter's logical axes (by its
  `nnx.state` path) and where each logical axis goes on the mesh (Megatron tensor
  parallel over "model", MoE experts over "expert", batch rows over ("data", "expert")).
* `param_shardings`, `shard_model`, `batch_sharding`: placements and placing.
* `from_pretrained(path, mesh=)` (also `elang_jax.hf.from_pretrained(..., mesh=)`): builds
  the model abstractly and puts each checkpoint tensor straight into its shard.
* `make_sharded_train_step`, `shard_train_state`, `shard_batch`, `save_train_state`,
  `restore_train_state`: the training step on a mesh and orbax checkpoints that restore
  onto any other mesh; `elang_jax.training.train_and_evaluate(..., mesh=)` runs the whole
  fine-tuning loop that way (`train_on_mesh`).
* Data-parallel routing is a keyword of every compiled step (`serving_step(b, mesh=mesh,
  rebalance=True)`, `exit_step(b, mesh=mesh)`): each data shard packs its own rows into its
  own bucket inside `shard_map`; `rebalance` spreads escalated rows over the shards with an
  all-to-all before the Super tier (`balanced_apply`). It lives in the step engine.
* Expert-parallel MoE lives with the MoE layer: `elang_jax.moe.expert_parallel_apply`,
  `elang_jax.moe.ExpertParallelFFN`.

Example::

    mesh = make_mesh(data=4, model=2)
    model = shard_model(model, mesh)  # in place
    ids = jax.device_put(ids, batch_sharding(mesh))
    logits = jax.jit(lambda m, x: m(x).logits)(model, ids)
"""

from elang_jax.sharding._data_parallel import DataParallel, balanced_apply, exchange_capacity
from elang_jax.sharding._load import ShardedLoader, from_pretrained
from elang_jax.sharding._mesh import (
    BATCH_AXES,
    DATA,
    EXPERT,
    MESH_AXES,
    MODEL,
    make_mesh,
    mesh_shape,
)
from elang_jax.sharding._rules import (
    LOGICAL_AXIS_RULES,
    PARAM_AXES,
    UnknownParameterError,
    axes_for_path,
    batch_sharding,
    logical_axes,
    param_shardings,
    resolve_spec,
    shard_model,
    state_shardings,
)
from elang_jax.sharding._train import (
    MeshTraining,
    RestoredState,
    TrainShardings,
    make_sharded_train_step,
    restore_train_state,
    save_train_state,
    shard_batch,
    shard_train_state,
    train_on_mesh,
    train_shardings,
)

__all__ = [
    # Mesh
    "BATCH_AXES",
    "DATA",
    "EXPERT",
    "MESH_AXES",
    "MODEL",
    "make_mesh",
    "mesh_shape",
    # Rules and placement
    "LOGICAL_AXIS_RULES",
    "PARAM_AXES",
    "UnknownParameterError",
    "axes_for_path",
    "batch_sharding",
    "logical_axes",
    "param_shardings",
    "resolve_spec",
    "shard_model",
    "state_shardings",
    # Data-parallel routing (implemented in the step engine: `serving_step(b, mesh=...)`)
    "DataParallel",
    "balanced_apply",
    "exchange_capacity",
    # Sharded loading
    "ShardedLoader",
    "from_pretrained",
    # Training on a mesh, checkpoints across meshes
    "MeshTraining",
    "RestoredState",
    "TrainShardings",
    "make_sharded_train_step",
    "restore_train_state",
    "save_train_state",
    "shard_batch",
    "shard_train_state",
    "train_on_mesh",
    "train_shardings",
]
