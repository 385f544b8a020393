"""ReLU-fication: swaps a GELU classifier's FFN activation for ReLU and fine-tunes it briefly.

MoEfication needs sparse FFN activations: with ReLU most neurons are exactly zero on a token,
so routing to a few experts loses little. GELU leaves small negative values everywhere. The
recipe: copy the fine-tuned checkpoint with `hidden_act = "relu"` in its config.json
(`relu_copy`), score the copy as it is (`swap_metrics`: what the swap alone costs), then
fine-tune a fraction of an epoch at a small learning rate with the ordinary GLUE loop
(`relufy_glue`: `elang_jax.training.train_and_evaluate`, the `sst2_minilm` preset otherwise
unchanged).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from elang_jax import data, training
from elang_jax.hf import from_pretrained


def relu_copy(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """A copy of a Hugging Face directory whose config says `hidden_act: relu`.

    Every other file (weights, tokenizer) is copied unchanged; returns `out_dir`.
    """
    src, out = Path(model_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json":
            shutil.copy2(f, out / f.name)
    config = json.loads((src / "config.json").read_text())
    config["hidden_act"] = "relu"
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def swap_metrics(
    model_dir: str | os.PathLike[str],
    dev: data.Encoded,
    batch_size: int,
    buckets: data.LengthBuckets | Sequence[int],
) -> dict[str, float]:
    """The classifier in `model_dir` (a `relu_copy`) scored on `dev` before any fine-tuning:
    what the activation swap alone costs (`elang_jax.training.evaluate`'s metrics)."""
    model = from_pretrained(model_dir, head="sequence_classification")
    return training.evaluate(model, dev, batch_size, buckets)


def relufy_glue(
    model_dir: str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    *,
    epochs: float = 0.2,
    learning_rate: float = 2e-5,
    max_steps: int | None = None,
    record: Mapping[str, Any] | None = None,
    log: Callable[[str], Any] = lambda _: None,
) -> dict[str, Any]:
    """ReLU-fies the SST-2 classifier in `model_dir` and fine-tunes it (`sst2_minilm`).

    Args:
      model_dir: a fine-tuned Hugging Face classifier directory (GELU).
      workdir: where the ReLU copy (`relu_init/`), the fine-tuning run (`metrics.jsonl`,
        `final/`) and `relufy.json` go.
      epochs: fine-tuning epochs (a fraction of one is enough).
      learning_rate: peak learning rate (10% warmup).
      max_steps: stop after this many steps (None: the epochs decide).
      record: stored as `args` in `relufy.json` (None: these arguments).
      log: called with each line of progress (the swap's metrics, then the run's).

    Returns:
      {"swapped": dev metrics right after the swap, "finetuned": the run's final metrics,
       "args": record}, also written to <workdir>/relufy.json.
    """
    workdir = Path(workdir)
    if record is None:
        record = dict(
            model_dir=str(model_dir),
            workdir=str(workdir),
            epochs=epochs,
            learning_rate=learning_rate,
            max_steps=max_steps,
        )
    init = relu_copy(model_dir, workdir / "relu_init")
    config = training.sst2_minilm(
        model_dir=init,
        epochs=epochs,
        learning_rate=learning_rate,
        warmup_ratio=0.1,
        eval_every=0,
        save_every=0,
        progress=False,
        **({"max_steps": max_steps} if max_steps else {}),
    )
    tokenizer = data.load_tokenizer(init)
    dev = data.encode_glue(tokenizer, data.read_glue("sst2", "dev"), 64, truncate=True)
    swapped = swap_metrics(init, dev, config.eval_batch_size, data.LengthBuckets(config.buckets))
    log(f"after the swap, before fine-tuning: {swapped}")
    metrics = training.train_and_evaluate(config, workdir)
    log(json.dumps(metrics, indent=2, default=str))
    result = {"swapped": swapped, "finetuned": metrics, "args": dict(record)}
    (workdir / "relufy.json").write_text(json.dumps(result, default=str))
    return result
