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
* `example_flops` on a step's outputs, from the front end's analytic cost.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, runtime_checkable

import chex
import jax
import numpy as np
from flax import nnx

from elang_jax.core import bucket_sizes


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
      batch_size: the rows every call must have.
      buckets: the static compaction buckets for this batch size.
      traces: how many times the program was traced (1 after any number of calls that
        only change inputs, thresholds or weights).
    """

    def __init__(
        self,
        program: StepProgram,
        batch_size: int,
        buckets: tuple[int, ...],
        flops: Callable[[Any, int], np.ndarray] | None = None,
    ):
        self.batch_size = batch_size
        self.buckets = buckets
        self.traces = 0
        self._program = program
        self._flops = flops
        self._jitted = jax.jit(self._traced, static_argnums=(0, 1))

    def _traced(self, treedef, static, leaves, inputs, valid, params):
        self.traces += 1
        # Fresh copies of the caller's modules: what the program changes on them (e.g. the
        # active experts) never reaches the caller's objects.
        modules = jax.tree.unflatten(treedef, leaves)
        return self._program.run(static, modules, inputs, valid, params, self.buckets)

    def __call__(self, *args, **kwargs):
        inputs, valid, params = self._program.prepare(self.batch_size, *args, **kwargs)
        modules, static = self._program.structure()
        # NNX modules are pytrees: the leaves are the current arrays (in-place updates
        # included) and the treedef holds the structure and static attributes, so a changed
        # structure retraces. Flattening costs ~0.4 ms per MiniLM-sized model, against
        # ~3 ms for `nnx.split`'s graph traversal, on every call.
        leaves, treedef = jax.tree.flatten(tuple(modules))
        return self._jitted(treedef, static, leaves, inputs, valid, params)

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

    def example_flops(self, out: Any, length: int) -> np.ndarray:
        """[b] analytic FLOPs of each example of a batch padded to `length`."""
        if self._flops is None:
            raise NotImplementedError(f"{type(self._program).__name__} has no FLOP model")
        return self._flops(out, length)


class StepEngine:
    """Compiled steps of one front end, cached per batch size.

    Args:
      program: the front end's `StepProgram`.
      bucket_fractions: the compaction buckets as fractions of the batch (`bucket_sizes`).
      flops: `(outputs, padded length) -> [b] FLOPs`, or None.
    """

    def __init__(
        self,
        program: StepProgram,
        bucket_fractions: Sequence[float],
        flops: Callable[[Any, int], np.ndarray] | None = None,
    ):
        self._program = program
        self._fractions = tuple(bucket_fractions)
        self._flops = flops
        self._steps: dict[int, CompiledStep] = {}

    def step(self, batch_size: int) -> CompiledStep:
        if isinstance(batch_size, bool) or not float(batch_size).is_integer() or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        batch_size = int(batch_size)
        if batch_size not in self._steps:
            buckets = bucket_sizes(batch_size, self._fractions)
            self._steps[batch_size] = CompiledStep(self._program, batch_size, buckets, self._flops)
        return self._steps[batch_size]
