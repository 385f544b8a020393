"""What one benchmark returns: its candidates' timings and ratios, and where they ran.

Ratios are speed-ups, baseline over candidate (> 1: the candidate is faster), so the
measured ratio and the analytic FLOP ratio read the same way and their quotient says how
much of the FLOP saving the wall-clock delivers.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
from collections.abc import Mapping
from typing import Any

import jax

from elang_jax.jsonio import to_jsonable
from elang_jax.timing import Timing


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One timed computation of a benchmark.

    Attributes:
      name: its label in the table.
      median_ms: median milliseconds of one call.
      min_ms: fastest call.
      speedup: baseline median over this median (1.0 for the baseline itself).
      flop_speedup: baseline FLOPs over this candidate's (analytic, `elang_jax.flops`);
        None where no FLOP model applies, or where the candidate does no costly work at all
        (an infinite ratio: the empty bucket).
      info: what the candidate did (share routed, mean layers, tokens kept, throughput).
    """

    name: str
    median_ms: float
    min_ms: float
    speedup: float
    flop_speedup: float | None = None
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def delivered(self) -> float | None:
        """Measured over FLOP speed-up: the share of the analytic saving the clock shows."""
        return None if self.flop_speedup is None else self.speedup / self.flop_speedup


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """One benchmark's result.

    Attributes:
      name: the benchmark's name (a key of `BENCHMARKS`).
      baseline: name of the candidate the ratios are relative to.
      candidates: every candidate, the baseline first.
      device: the JAX device the candidates ran on.
      backend: `jax.default_backend()` (cpu, gpu, tpu).
      jax_version: `jax.__version__`.
      args: the settings that shaped this benchmark (sizes, targets, rounds).
      notes: what the reader should know (skipped candidates and why).
    """

    name: str
    baseline: str
    candidates: tuple[Candidate, ...]
    device: str
    backend: str
    jax_version: str
    args: Mapping[str, Any]
    notes: tuple[str, ...] = ()

    def candidate(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        have = [c.name for c in self.candidates]
        raise KeyError(f"{self.name}: no candidate {name!r}; have {have}")

    def to_dict(self) -> dict[str, Any]:
        """JSON data (`elang_jax.jsonio.to_jsonable`), each candidate with its `delivered`."""
        out = to_jsonable(self)
        for c, d in zip(self.candidates, out["candidates"], strict=True):
            d["delivered"] = to_jsonable(c.delivered)
        return out


def environment() -> dict[str, str]:
    """Where the suite runs: device, backend and versions."""
    device = jax.devices()[0]
    return dict(
        device=f"{device.platform}:{device.device_kind}",
        backend=jax.default_backend(),
        jax_version=jax.__version__,
        python=platform.python_version(),
        cpu_count=str(os.cpu_count()),
    )


def make_result(
    name: str,
    timings: Mapping[str, Timing],
    baseline: str,
    args: Mapping[str, Any],
    *,
    flop_speedups: Mapping[str, float | None] | None = None,
    info: Mapping[str, Mapping[str, Any]] | None = None,
    notes: tuple[str, ...] = (),
) -> BenchResult:
    """Assembles a `BenchResult` from timings, the baseline first.

    Args:
      timings: name -> `Timing`, the baseline among them.
      baseline: the candidate the speed-ups are relative to.
      flop_speedups: name -> analytic speed-up (inf or None: no finite ratio).
      info: name -> what the candidate did.
    """
    if baseline not in timings:
        raise ValueError(f"baseline {baseline!r} was not timed; timed: {list(timings)}")
    flop_speedups = flop_speedups or {}
    info = info or {}
    base = timings[baseline].median_ms
    order = [baseline, *(n for n in timings if n != baseline)]
    candidates = []
    for n in order:
        flop = flop_speedups.get(n, 1.0 if n == baseline else None)
        candidates.append(
            Candidate(
                name=n,
                median_ms=timings[n].median_ms,
                min_ms=timings[n].min_ms,
                # The floor keeps a ratio finite should a clock ever read 0.
                speedup=base / max(timings[n].median_ms, 1e-9),
                flop_speedup=flop if flop is not None and math.isfinite(flop) else None,
                info=dict(info.get(n, {})),
            )
        )
    env = environment()
    return BenchResult(
        name=name,
        baseline=baseline,
        candidates=tuple(candidates),
        device=env["device"],
        backend=env["backend"],
        jax_version=env["jax_version"],
        args=dict(args),
        notes=tuple(notes),
    )
