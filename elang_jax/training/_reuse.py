"""A fine-tuning run reused when a finished one with the same settings is on disk.

The demo and the pair experiment both keep fine-tuned models in a cache directory: a run
that finished with the same settings is loaded, a half-finished one resumes, and one with
other settings is an error naming the directory.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

import jax

from elang_jax.training._config import FinetuneConfig
from elang_jax.training._finetune import (
    FINAL_DIR,
    METRICS_FILE,
    run_settings,
    stored_run_settings,
    train_and_evaluate,
)
from elang_jax.training._hooks import LossHook


def finished_run(
    workdir: str | Path, config: FinetuneConfig, *, loss: LossHook | None = None
) -> dict[str, Any] | None:
    """The final metrics of a finished run with the same settings (and loss hook) in
    `workdir`, else None."""
    workdir = Path(workdir)
    metrics_file = workdir / METRICS_FILE
    if not metrics_file.is_file():
        return None
    if stored_run_settings(workdir) != run_settings(config, loss=loss):
        return None
    # The "final" record is written after final/ is complete: it marks a finished run.
    finals = [r for r in map(json.loads, metrics_file.read_text().splitlines()) if r.get("final")]
    if not finals or not (workdir / FINAL_DIR / "config.json").is_file():
        return None
    return finals[-1]


def train_or_reuse(
    config: FinetuneConfig,
    workdir: str | Path,
    *,
    name: str,
    remedy: str = "another cache directory",
    error: type[Exception] = ValueError,
    loss: LossHook | None = None,
) -> tuple[dict[str, Any], float, bool]:
    """Fine-tunes into `workdir`, or reuses the finished run there with the same settings.

    Returns (final metrics, seconds spent training in this call, whether it was reused). A
    run with other settings in `workdir` raises `error` naming model `name` and `remedy`.
    `loss` is the run's loss hook (None: cross-entropy), part of its settings. A run that
    trains releases every compiled program when it ends (`release_compiled`).
    """
    done = finished_run(workdir, config, loss=loss)
    if done is not None:
        return done, 0.0, True
    t0 = time.perf_counter()
    try:
        done = train_and_evaluate(config, workdir, loss=loss)
    except ValueError as e:
        if "different settings" in str(e):
            raise error(
                f"{workdir} holds a {name} model fine-tuned with other settings: use "
                f"{remedy}, or delete that directory ({e})"
            ) from None
        raise
    release_compiled()
    return done, time.perf_counter() - t0, False


def release_compiled() -> None:
    """Drops every compiled program (they recompile on their next call, from the persistent
    compilation cache when one is set). XLA:CPU maps each kernel of an executable into
    memory on its own, and Linux caps a process at 65,530 maps (`vm.max_map_count`): a job
    that fine-tunes several models and then compiles serving steps in one process ran out
    of maps (LLVM "Unable to allocate section memory") until training's programs, no longer
    needed, were released."""
    gc.collect()
    jax.clear_caches()
    gc.collect()
