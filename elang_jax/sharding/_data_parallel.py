"""Data-parallel routing under `elang_jax.sharding`'s name: every compiled step takes a mesh.

The implementation lives in the step engine (`elang_jax.engine._data_parallel`,
`elang_jax.engine._rebalance`), which every front end imports and which imports nothing
from this package, so there is no import cycle. Usage::

    mesh = make_mesh(data=4, model=2)
    step = cascade.serving_step(512, mesh=mesh, rebalance=True)
    out = step(inputs)  # out.buckets_used: [4 K] the rows each shard ran each tier on
"""

from elang_jax.engine._data_parallel import DATA_AXIS, DataParallel
from elang_jax.engine._rebalance import balanced_apply, exchange_capacity

__all__ = ["DATA_AXIS", "DataParallel", "balanced_apply", "exchange_capacity"]
