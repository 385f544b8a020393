"""`make_mesh`: the one device mesh every sharded path uses, axes by role.

Axes, outermost first: "data" (batch rows), "expert" (MoE experts; batch rows too outside the
experts, as in MaxText), "model" (tensor parallel: heads and FFN columns). The innermost axis
gets neighbouring devices, where the tensor-parallel collectives (one per block) are cheapest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

DATA = "data"
EXPERT = "expert"
MODEL = "model"
MESH_AXES = (DATA, EXPERT, MODEL)
# The axes a batch's rows are split over: each data (and expert) shard holds its own rows.
BATCH_AXES = (DATA, EXPERT)


def make_mesh(
    data: int = 1,
    model: int = 1,
    expert: int = 1,
    devices: Sequence[Any] | None = None,
) -> Mesh:
    """A mesh of shape (data, expert, model) with axis names ("data", "expert", "model").

    Args:
      data: data-parallel shards (batch rows).
      model: tensor-parallel shards (attention heads, FFN columns, vocabulary).
      expert: expert-parallel shards (MoE experts; also split the batch rows elsewhere).
      devices: the devices to lay out, in order; None: all of `jax.devices()`. Their number
        must equal data * expert * model.

    Raises:
      ValueError: a size below 1, or a product that differs from the number of devices.
    """
    for name, size in (("data", data), ("model", model), ("expert", expert)):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={size!r}")
    devs = list(jax.devices() if devices is None else devices)
    need = data * expert * model
    if need != len(devs):
        where = "given" if devices is not None else f"available ({jax.default_backend()})"
        raise ValueError(
            f"mesh data={data} x expert={expert} x model={model} needs {need} devices, but "
            f"{len(devs)} are {where}; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count"
            "=N (set before jax starts) forces N devices"
        )
    if devices is None:
        # jax.make_mesh orders devices for the platform's interconnect (ICI rings on TPU).
        # Auto axes: plain `jit` with `NamedSharding`s lets GSPMD place what is in between
        # (jax.make_mesh defaults to Explicit axes, which change how jit types arrays).
        return jax.make_mesh(
            (data, expert, model), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devs
        )
    grid = np.asarray(devs, dtype=object).reshape(data, expert, model)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def mesh_shape(mesh: Mesh) -> dict[str, int]:
    """{axis name: size} of `mesh` (every axis of `MESH_AXES`; absent ones have size 1)."""
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape, strict=True))
    return {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
