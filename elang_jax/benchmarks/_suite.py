"""The benchmark registry and a run over some or all of it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from elang_jax.benchmarks._acc import bench_acc
from elang_jax.benchmarks._backbone import bench_backbone
from elang_jax.benchmarks._cascade import bench_cascade
from elang_jax.benchmarks._compaction import bench_compaction
from elang_jax.benchmarks._compose import bench_compose
from elang_jax.benchmarks._config import BENCHMARK_NAMES, BenchConfig
from elang_jax.benchmarks._exits import bench_exits
from elang_jax.benchmarks._moe import bench_moe
from elang_jax.benchmarks._result import BenchResult
from elang_jax.benchmarks._speculative import bench_speculative

Benchmark = Callable[[BenchConfig], BenchResult]

BENCHMARKS: dict[str, Benchmark] = {
    "backbone": bench_backbone,
    "compaction": bench_compaction,
    "cascade": bench_cascade,
    "exits": bench_exits,
    "moe": bench_moe,
    "acc": bench_acc,
    "compose": bench_compose,
    "speculative": bench_speculative,
}
assert tuple(BENCHMARKS) == BENCHMARK_NAMES, "the registry and BENCHMARK_NAMES must agree"


def resolve_names(names: Iterable[str] | None) -> tuple[str, ...]:
    """The benchmarks to run, in suite order; None: all. Raises on an unknown name."""
    if names is None:
        return BENCHMARK_NAMES
    names = list(names)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(
            f"unknown benchmark {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(BENCHMARK_NAMES)}"
        )
    return tuple(n for n in BENCHMARK_NAMES if n in names)


def run_benchmarks(
    config: BenchConfig,
    names: Sequence[str] | None = None,
    *,
    on_result: Callable[[BenchResult], object] | None = None,
) -> list[BenchResult]:
    """Runs the named benchmarks (default: all) one after another.

    Names are checked before anything runs, so a typo costs no compile time.
    `on_result` sees each result as soon as it exists (the CLI prints its table there).
    """
    results = []
    for name in resolve_names(names):
        result = BENCHMARKS[name](config)
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results
