"""The step engine: one place that compiles a serving step from a front end's program.

A front end (`Cascade`, `MultiExit.exit_step`, `ComposedClassifier`, `ElangSeq2Seq`) says
three things through a `StepProgram`: what it is made of now (`structure`: modules and a
hashable static description), how a call's arguments become arrays (`prepare`: checks and
normalisation), and the traced computation (`run`). The engine does the rest, once for all:

* one `CompiledStep` per batch size, an object with named attributes (`batch_size`,
  `buckets`, `traces`) whose call checks the arguments and runs the compiled program;
* the structure is read on every call (the modules' pytree structure, a static argument
  of `jax.jit`): replacing a model, a head, a temperature or an FFN (e.g. `moefy` in
  place) retraces the step, while in-place weight updates, a submodule replaced by one of
  the same shapes, and new thresholds reuse the compiled program;
* thresholds and other knobs are traced arguments, so calibration never recompiles;
* `example_flops` on a step's outputs, from the front end's analytic cost;
* with a mesh, data-parallel routing (`DataParallel`): the batch split over the mesh's
  row axes ("data", and "expert" if present) and `run` traced once per shard under
  `jax.shard_map`, each shard packing
  its own rows into its own buckets, optionally rebalancing escalated rows over the shards.
  Every front end gets it from here; none of them knows about meshes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, runtime_checkable

import chex
import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from elang_jax.core import bucket_sizes
from elang_jax.engine._data_parallel import DataParallel


@runtime_checkable  # beartype checks arguments against it under pytest
class StepProgram(Protocol):
    """What a front end gives the engine (see the module docstring)."""

    def structure(self) -> tuple[Sequence[nnx.Module], Hashable]:
        """The modules the step runs (read now) and a hashable static description."""
        ...

    def prepare(self, batch_size: int, *args, **kwargs) -> tuple[Any, Any, Any]:
        """A call's arguments checked and normalised: (inputs, valid, params) pytrees."""
        ...

    def run(
        self,
        static: Hashable,
        modules: Sequence[nnx.Module],
        inputs: Any,
        valid: Any,
        params: Any,
        buckets: tuple[int, ...],
        /,
    ) -> Any:
        """The traced computation on merged copies of the modules (arguments passed by
        position, so a front end names them after what they hold, e.g. `thresholds`)."""
        ...


class CompiledStep:
    """A front end's serving step for one batch size.

    Attributes:
      batch_size: the rows every call must have (the global batch, with a mesh).
      buckets: the static compaction buckets for the rows one data shard holds (the whole
        batch without a mesh).
      layout: the `DataParallel` layout, or None (one device).
      shards: the number of data shards (1 without a mesh).
      traces: how many times the program was traced (1 after any number of calls that
        only change inputs, thresholds or weights).
    """

    def __init__(
        self,
        program: StepProgram,
        batch_size: int,
        buckets: tuple[int, ...],
        flops: Callable[[Any, Any], np.ndarray] | None = None,
        layout: DataParallel | None = None,
    ):
        self.batch_size = batch_size
        self.buckets = buckets
        self.layout = layout
        self.shards = 1 if layout is None else layout.shards
        self.traces = 0
        self._program = program
        self._flops = flops
        self._jitted = jax.jit(self._traced, static_argnums=(0, 1))

    def _traced(self, treedef, static, leaves, inputs, valid, params):
        self.traces += 1

        def body(leaves, inputs, valid, params):
            # Fresh copies of the caller's modules: what the program changes on them (e.g.
            # the active experts) never reaches the caller's objects.
            modules = jax.tree.unflatten(treedef, leaves)
            return self._program.run(static, modules, inputs, valid, params, self.buckets)

        if self.layout is None:
            return body(leaves, inputs, valid, params)
        return self.layout.shard(body)(leaves, inputs, valid, params)

    def _arguments(self, args, kwargs) -> tuple[Any, ...]:
        layout = self.layout
        rows = self.batch_size if layout is None else layout.process_rows(self.batch_size)
        inputs, valid, params = self._program.prepare(rows, *args, **kwargs)
        modules, static = self._program.structure()
        # NNX modules are pytrees: the leaves are the current arrays (in-place updates
        # included) and the treedef holds the structure and static attributes, so a changed
        # structure retraces. Flattening costs ~0.4 ms per MiniLM-sized model, against
        # ~3 ms for `nnx.split`'s graph traversal, on every call.
        leaves, treedef = jax.tree.flatten(tuple(modules))
        if layout is not None:
            inputs, valid = layout.place_rows((inputs, valid), self.batch_size)
            params = layout.place_replicated(params)
            if jax.process_count() > 1:
                leaves = layout.place_replicated(leaves)
        return treedef, static, leaves, inputs, valid, params

    def __call__(self, *args, **kwargs):
        return self._jitted(*self._arguments(args, kwargs))

    def lower(self, *args, **kwargs) -> jax.stages.Lowered:
        """The step lowered for these arguments (e.g. `.compile().as_text()`, the HLO)."""
        return self._jitted.lower(*self._arguments(args, kwargs))

    @property
    def jitted(self) -> Callable[..., Any]:
        """The `jax.jit` function behind the step (e.g. its `_cache_size()`)."""
        return self._jitted

    def limit_traces(self, n: int) -> CompiledStep:
        """Fails (`chex.assert_max_traces`) once the program is traced more than n times
        from now on: pins a step's compile count in tests. chex counts per call site of
        this method: call `chex.clear_trace_counter()` before pinning several steps from
        one place."""
        self._jitted = jax.jit(chex.assert_max_traces(self._traced, n=n), static_argnums=(0, 1))
        return self

    def example_flops(self, out: Any, length: int | Sequence[int]) -> np.ndarray:
        """[b] analytic FLOPs of each example of a batch padded to `length` (or one length
        per tier, when the tiers had their own inputs)."""
        if self._flops is None:
            raise NotImplementedError(f"{type(self._program).__name__} has no FLOP model")
        return self._flops(out, length)


class StepEngine:
    """Compiled steps of one front end, cached per batch size.

    Args:
      program: the front end's `StepProgram`.
      bucket_fractions: the compaction buckets as fractions of the batch (`bucket_sizes`).
      flops: `(outputs, padded length or one per tier) -> [b] FLOPs`, or None.
    """

    def __init__(
        self,
        program: StepProgram,
        bucket_fractions: Sequence[float],
        flops: Callable[[Any, Any], np.ndarray] | None = None,
    ):
        self._program = program
        self._fractions = tuple(bucket_fractions)
        self._flops = flops
        self._steps: dict[tuple[int, DataParallel | None], CompiledStep] = {}

    def step(
        self, batch_size: int, mesh: Mesh | None = None, rebalance: bool = False
    ) -> CompiledStep:
        """The step for `batch_size` rows, cached.

        Args:
          batch_size: rows per call (the global batch).
          mesh: None: one device. A mesh with a "data" axis: the rows split over "data"
            (and "expert" if present), each shard routing its own rows (see
            `DataParallel`); the "model" axis is left to the parameters' own shardings.
            batch_size must divide evenly over the shards.
          rebalance: with a mesh, deal the escalated rows out evenly over the data shards
            before each escalated tier runs (cascades); outputs are unchanged.
        """
        if isinstance(batch_size, bool) or not float(batch_size).is_integer() or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        batch_size = int(batch_size)
        if mesh is None:
            if rebalance:
                raise ValueError("rebalance=True needs a mesh with a 'data' axis")
            layout, rows = None, batch_size
        else:
            layout = DataParallel.make(mesh, rebalance)
            rows = layout.shard_rows(batch_size)
        key = (batch_size, layout)
        if key not in self._steps:
            buckets = bucket_sizes(rows, self._fractions)
            self._steps[key] = CompiledStep(self._program, batch_size, buckets, self._flops, layout)
        return self._steps[key]
