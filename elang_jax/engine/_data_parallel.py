"""Data-parallel routing: a compiled step's program run once per data shard.

With a mesh, the engine splits the batch's rows over the mesh's row axes ("data", and
"expert" where the mesh has it, as `elang_jax.sharding`'s rules split a batch) and runs
the front end's traced `run` inside `jax.shard_map`, manual over those axes only. Each
data shard therefore packs its own rows into its own bucket (its own `lax.switch` index):
no device gathers the batch. The "model" axis stays automatic: parameters placed with
tensor-parallel `NamedSharding`s run unchanged, GSPMD partitions each branch over it, and
a bucket index, being one logical value per data shard, is the same on every model shard
by construction, so the tensor-parallel collectives inside a branch always match.

Why "expert" is manual too: left automatic beside a sharded "model" axis, GSPMD put
collective-permutes inside the branches, and XLA:CPU meets a collective-permute with every
device of the program, including those of data shards that took another branch: the step
hung (8 forced devices, mesh data=2 x expert=2 x model=2). Parameters split over "expert"
(MoE experts) enter the step whole (an all-gather before it, outside every branch).

A front end's `run` needs no mesh argument: the layout is a fact of the compiled step,
read at trace time (`active_layout`), as `jax.set_mesh` is. Only the engine's escalation
points (`elang_jax.engine.escalate_apply`) read it, to rebalance escalated rows.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
# The axes a batch's rows are split over, where the mesh has them: "expert" splits rows too
# outside the experts (as in MaxText and `elang_jax.sharding`'s rules).
ROW_AXES = (DATA_AXIS, "expert")

_ACTIVE: contextvars.ContextVar[DataParallel | None] = contextvars.ContextVar(
    "elang_jax_data_parallel", default=None
)


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """How a compiled step spreads its batch over a mesh.

    Attributes:
      mesh: the device mesh (axis types made Auto: only "data" is manual, inside the step).
      rebalance: spread the escalated rows evenly over the data shards (an all-to-all)
        before each escalated tier runs (`elang_jax.engine.balanced_apply`).
    """

    mesh: Mesh
    rebalance: bool = False

    @classmethod
    def make(cls, mesh: Mesh, rebalance: bool = False) -> DataParallel:
        """Checks the mesh (it needs a "data" axis) and makes its axes Auto."""
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
        if DATA_AXIS not in mesh.axis_names:
            raise ValueError(
                f"the mesh needs a {DATA_AXIS!r} axis to shard the batch over, got axes "
                f"{tuple(mesh.axis_names)}"
            )
        if not isinstance(rebalance, bool):
            raise TypeError(f"rebalance must be a bool, got {rebalance!r}")
        # Explicit axes type every array by its sharding, and `lax.switch` then refuses
        # branches whose outputs carry different shardings (jax #29637); Auto leaves the
        # model and expert axes to GSPMD.
        if any(t != AxisType.Auto for t in mesh.axis_types):
            mesh = Mesh(
                mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names)
            )
        return cls(mesh=mesh, rebalance=rebalance)

    @property
    def row_axes(self) -> tuple[str, ...]:
        """The mesh axes the rows are split over (manual inside the step)."""
        return tuple(a for a in ROW_AXES if a in self.mesh.axis_names)

    @property
    def shards(self) -> int:
        """The number of data shards: the product of the row axes' sizes."""
        return int(np.prod([self.mesh.shape[a] for a in self.row_axes]))

    def shard_rows(self, batch_size: int) -> int:
        """Rows per data shard; a batch the shards cannot split evenly is an error."""
        if batch_size % self.shards:
            axes = " x ".join(f"{a}={self.mesh.shape[a]}" for a in self.row_axes)
            raise ValueError(
                f"batch_size {batch_size} is not divisible by the mesh's row axes {axes} "
                f"({self.shards} shards): every data shard runs the same number of rows"
            )
        return batch_size // self.shards

    @property
    def rows(self) -> NamedSharding:
        """Per-row arrays: rows split over the row axes, replicated over "model"."""
        return NamedSharding(self.mesh, P(self.row_axes))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def process_rows(self, batch_size: int) -> int:
        """The rows this process feeds (all of them in a single-process run)."""
        index = self.rows.addressable_devices_indices_map((batch_size,))
        starts = {idx[0].start or 0 for idx in index.values() if idx is not None}
        return len(starts) * self.shard_rows(batch_size)

    def place_rows(self, tree: Any, batch_size: int) -> Any:
        """Puts per-row arrays on the mesh, rows split over "data". With several
        processes, each passes its own rows (`process_rows`) and the result is global."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self.rows)

        def one(x):
            x = np.asarray(x)
            return jax.make_array_from_process_local_data(self.rows, x, (batch_size, *x.shape[1:]))

        return jax.tree.map(one, tree)

    def place_replicated(self, tree: Any) -> Any:
        """Puts arrays every shard reads whole (thresholds; parameters in a multi-process
        run, where an array on one local device cannot enter a global computation)."""

        def one(x):
            if isinstance(x, jax.Array) and not x.is_fully_addressable:
                return x  # already global, with the sharding its owner chose
            if jax.process_count() == 1:
                return jax.device_put(x, self.replicated)
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, self.replicated, lambda i: host[i])

        return jax.tree.map(one, tree)

    def shard(self, body: Callable[..., Any]) -> Callable[..., Any]:
        """`body(leaves, inputs, valid, params)` run per data shard: leaves and params
        whole, inputs and valid by rows, every output by rows (per-shard fields come back
        stacked, one row per shard)."""

        def traced(leaves, inputs, valid, params):
            with _activate(self):
                return body(leaves, inputs, valid, params)

        rows = P(self.row_axes)
        # check_vma=False: front ends build branch outputs from constants (zeros, fills)
        # and from per-row values alike; the step's outputs are all per-row.
        return jax.shard_map(
            traced,
            mesh=self.mesh,
            in_specs=(P(), rows, rows, P()),
            out_specs=rows,
            axis_names=set(self.row_axes),
            check_vma=False,
        )


@contextlib.contextmanager
def _activate(layout: DataParallel | None) -> Iterator[None]:
    token = _ACTIVE.set(layout)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_layout() -> DataParallel | None:
    """The data-parallel layout of the step being traced, at its top level (None without a
    mesh, and inside a branch: see `without_layout`)."""
    return _ACTIVE.get()


def without_layout() -> contextlib.AbstractContextManager[None]:
    """Code traced inside a per-shard branch must issue no collective (the shards take
    different branches); escalation points inside it then fall back to local packing."""
    return _activate(None)
