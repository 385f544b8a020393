"""Tables on the terminal and one JSON file for a suite run."""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from elang_jax import jsonio
from elang_jax._version import __version__
from elang_jax.benchmarks._result import BenchResult, environment

# Written into every JSON file, so that a reader needs no code to interpret a number.
DEFINITIONS = dict(
    median_ms="median milliseconds of one call over the rounds (after a compile call)",
    min_ms="fastest call over the rounds",
    speedup="baseline median_ms / this median_ms (> 1: faster than the baseline)",
    flop_speedup="baseline FLOPs / this candidate's FLOPs (analytic, elang_jax.flops); "
    "null where no FLOP model applies or the candidate skips all costly work",
    non_finite="an infinite or undefined number (a threshold that never or always routes) is "
    'written as the string "inf", "-inf" or "nan"',
    delivered="speedup / flop_speedup: the share of the FLOP saving the clock shows",
)


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, float):
        return str(x)
    return f"{x:.4g}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _info(info: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_num(v)}" for k, v in info.items())


def format_table(result: BenchResult) -> str:
    """One benchmark's table: time, measured and FLOP speed-up, and what each candidate did."""
    args = " ".join(f"{k}={_num(v)}" for k, v in result.args.items() if not isinstance(v, list))
    lines = [
        f"== {result.name} ==  {result.device} (backend {result.backend}, jax "
        f"{result.jax_version})",
        f"   {args}",
    ]
    width = max(len("candidate"), *(len(c.name) for c in result.candidates))
    lines.append(
        f"{'candidate':<{width}}  {'median ms':>10} {'min ms':>10} {'speed-up':>9} "
        f"{'FLOP s-u':>9} {'meas/FLOP':>9}  info"
    )
    for c in result.candidates:
        delivered = "-" if c.delivered is None else f"{c.delivered:.2f}"
        lines.append(
            f"{c.name:<{width}}  {c.median_ms:10.3f} {c.min_ms:10.3f} {_ratio(c.speedup):>9} "
            f"{_ratio(c.flop_speedup):>9} {delivered:>9}  {_info(c.info)}"
        )
    lines.extend(f"   note: {n}" for n in result.notes)
    return "\n".join(lines)


def suite_dict(results: Sequence[BenchResult], config: Any = None) -> dict:
    """Every result of a run with the environment and the config (a `BenchConfig`, or the
    config dataclass of an eval/ driver), as JSON data."""
    return dict(
        suite="elang-jax bench",
        elang_jax_version=__version__,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        environment=environment(),
        definitions=DEFINITIONS,
        config=jsonio.to_jsonable(config),
        results=[r.to_dict() for r in results],
    )


def write_json(results: Sequence[BenchResult], path: str | os.PathLike, config: Any = None) -> Path:
    """Writes `suite_dict` to `path` as strict JSON (`elang_jax.jsonio.write_json`)."""
    return jsonio.write_json(suite_dict(results, config), path)
