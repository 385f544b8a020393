"""`elang-jax demo --pair`: the main job at the scale E-LANG was made for, a MiniLM-L6 Swift
in front of a 12-layer MPNet-base Super (`elang_jax.benchmarks.evaluate_pair`).

The same shape of run as the default demo: fine-tuned models cached (and resumed after a
Ctrl-C) under the cache directory, compiled programs cached there too, every method
calibrated on the held-out training sentences and reported on dev in one table, written as
results.json / results.csv / frontier.png (plus pair.json with everything `evaluate_pair`
returns), and `--eval-file` reporting every calibrated method on a user's labelled TSV.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from elang_jax import jsonio
from elang_jax.benchmarks import (
    PairComposed,
    PairEvalConfig,
    evaluate_pair,
    finetune_pair,
    format_pair,
)
from elang_jax.demo._data import read_eval_file
from elang_jax.demo._report import format_table, make_row, write_all
from elang_jax.demo._run import compile_cache


def pair_config(
    task: str = "sst2",
    *,
    quick: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    timing_rounds: int | None = None,
    progress: bool = True,
    even_buckets: bool = False,
) -> PairEvalConfig:
    """The pair demo's config: the distilled Swift, every method at both targets, the
    PyTorch peers; `quick` evaluates the same models on 128 dev examples, one timing round,
    without the guarantee rows and the peers. `even_buckets`: evenly spaced buckets for the
    cascades and the composed rows, not ones fitted to the calibration split."""
    kw: dict[str, Any] = dict(task=task, distill=True, progress=progress)
    if even_buckets:
        kw.update(fit_cascade_buckets=False, composed=PairComposed(fit_buckets=False))
    if cache_dir is not None:
        kw["cache_dir"] = os.fspath(Path(cache_dir).expanduser())
    if quick:
        kw.update(eval_limit=128, timing_rounds=1, guarantee_delta=None, peers=False)
    if timing_rounds is not None:
        kw["timing_rounds"] = timing_rounds
    return PairEvalConfig.full(**kw)


def demo_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`evaluate_pair`'s rows as the demo's report rows (table, JSON, CSV, plot)."""
    rows = []
    for r in result["rows"]:
        calibrated = "threshold" in r
        setting = [r["threshold"]] if calibrated else []
        skipped = {"inputs": 1.0 - r["to_super"]} if calibrated else {}
        kind = r.get("kind", "cascade") if calibrated else r["method"].split()[0].lower()
        if kind == "composed":
            setting += [r["swift_exit_threshold"], r["super_exit_threshold"], r["acc_rate"]]
        calibration = (
            dict(
                accuracy=r["calib_accuracy"],
                reference_accuracy=r["calib_super_accuracy"],
                target_met=r["target_met"],
                setting=setting,
            )
            if calibrated
            else None
        )
        rows.append(
            make_row(
                r["method"],
                kind,
                r["accuracy"],
                r["flop_speedup"],
                r["measured_speedup"],
                skipped,
                calibration=calibration,
                to_super=r["to_super"],
            )
        )
    return rows


def run_pair_demo(
    config: PairEvalConfig,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    eval_file: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs the pair demo and prints its tables; returns `evaluate_pair`'s result (and
    under "eval_file" the one on the user's TSV)."""
    t0 = time.perf_counter()
    if eval_file is not None:  # checked before anything slow
        read_eval_file(config.task, eval_file)
    cache = config.cache_path
    cache.mkdir(parents=True, exist_ok=True)
    echo(f"elang-jax demo --pair: task {config.task}, cache {cache}")
    with compile_cache(cache):
        models = finetune_pair(config)
        result = evaluate_pair(config, models)
        echo(format_pair(result))
        rows = demo_rows(result)
        echo(format_table(rows, f"{config.task} dev, MiniLM-L6 Swift -> MPNet-base Super"))
        if out_dir is not None:
            write_all(rows, out_dir, f"{config.task}: MiniLM-L6 -> MPNet-base")
            jsonio.write_json(result, Path(out_dir) / "pair.json")
        if eval_file is not None:
            user = config.replace(eval_file=os.fspath(eval_file), peers=False, timing_rounds=1)
            result["eval_file"] = evaluated = evaluate_pair(user, models)
            user_rows = demo_rows(evaluated)
            echo(format_table(user_rows, f"{eval_file}"))
            if out_dir is not None:
                write_all(user_rows, Path(out_dir) / "eval_file", f"{eval_file}")
    echo(f"done in {time.perf_counter() - t0:.0f} s")
    return result
