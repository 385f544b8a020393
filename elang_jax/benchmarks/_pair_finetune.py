"""Fine-tuning every model of the pair experiment (`_eval_pair`): Super, the Swift (perhaps
distilled from Super's soft labels) and CascadeBERT's plain-recipe Swifts without and with
the difficulty-aware loss, each a cached, resumable run (`_pair_models.finetune`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from elang_jax import training
from elang_jax.benchmarks._pair_config import PairEvalConfig
from elang_jax.benchmarks._pair_methods import SWIFT, SWIFT_CE, SWIFT_DAR, swift_roles
from elang_jax.benchmarks._pair_models import Finetuned, finetune, finetune_config
from elang_jax.benchmarks._pair_models import base_checkpoint as _base
from elang_jax.cascade import DarConfig, DifficultyAwareLoss
from elang_jax.checkpoints import sha256_of
from elang_jax.demo._models import fingerprint
from elang_jax.training._finetune import FINAL_DIR

HARD_FILE = "hard.npy"  # CascadeBERT's hard flags over the DAR Swift's training set
# The Super's logits over a distilled Swift's training set (named by the Super's weights and
# the training set).
TEACHER_FILE = "teacher_logits_{}.npy"


def finetune_configs(config: PairEvalConfig) -> dict[str, training.FinetuneConfig]:
    """Each role's `FinetuneConfig` (what its cached run must have run)."""
    out = {}
    for role in ("super", *swift_roles(config.methods)):
        spec = config.spec(role)
        out[role] = finetune_config(
            spec,
            _base("super" if role == "super" else SWIFT, spec),
            task=config.task,
            max_length=config.max_length,
            seed=config.seed,
            eval_batch_size=config.batch_size,
            # Fine-tuning always reports on all of dev: `eval_limit` must not change which
            # cached run is reused.
            eval_limit=None,
            holdout=config.calibration.holdout,
            holdout_seed=config.calibration.holdout_seed,
            holdout_kind=config.calibration.holdout_kind,
            progress=config.progress,
        )
    return out


def swift_workdir(config: PairEvalConfig) -> Path:
    """The Swift's run directory: `swift`, or `swift_distilled` for a distilled Swift."""
    return config.cache_path / (SWIFT if config.swift.distill is None else "swift_distilled")


def finetune_pair(config: PairEvalConfig) -> dict[str, Finetuned]:
    """Every model the methods need, fine-tuned or loaded from the cache: Super, the Swift
    (perhaps distilled from Super) and CascadeBERT's plain-recipe Swifts without and with
    DAR. The plain-recipe Swift may be adopted from a demo run."""
    fts = finetune_configs(config)
    adopt = config.swift_from
    if adopt is None and config.cache_dir is None:
        from elang_jax.checkpoints import cache_dir

        adopt = os.fspath(cache_dir() / "demo" / config.task / "super")
    plain_ft = fts.get(SWIFT_CE, fts[SWIFT] if config.swift.distill is None else None)
    # Plain Swift first: adopting or training it takes minutes, Super is the long part.
    plain = (
        None if plain_ft is None else finetune("swift", plain_ft, config.cache_path / SWIFT, adopt)
    )
    out = {"super": finetune("super", fts["super"], config.cache_path / "super")}
    if config.swift.distill is None:
        assert plain is not None
        out[SWIFT] = plain
    else:
        out[SWIFT] = _distilled_swift(config, out["super"], fts[SWIFT])
    if SWIFT_CE in fts:
        assert plain is not None
        out[SWIFT_CE] = plain
    if SWIFT_DAR in fts:
        assert plain is not None
        out[SWIFT_DAR] = _dar_swift(config, plain, fts[SWIFT_DAR])
    return out


def _distilled_swift(
    config: PairEvalConfig, teacher: Finetuned, ft: training.FinetuneConfig
) -> Finetuned:
    distill = config.swift.distill
    assert distill is not None
    workdir = swift_workdir(config)
    # Named by the Super's weights: a Super fine-tuned again gets new soft labels (and the
    # Swift's run, which records them by content, is then another run), never stale ones.
    weights = sha256_of(teacher.workdir / FINAL_DIR / "model.safetensors")
    # ... and by what decides the training set, so a recipe on more examples never meets
    # soft labels of fewer.
    training_set = (ft.task, ft.train_split, ft.train_limit, ft.max_length, ft.truncate)
    holdout = (ft.holdout, ft.holdout_seed, str(ft.holdout_kind))
    teacher_file = workdir / TEACHER_FILE.format(fingerprint(weights, training_set, holdout))
    if not teacher_file.is_file():
        # The Super's logits over the Swift's training set are the soft labels.
        logits, _ = training.training_set_logits(
            teacher.model, teacher.tokenizer, ft, batch_size=config.batch_size
        )
        _save_atomic(teacher_file, logits)
        training.release_compiled()
    loss = training.DistillationLoss(
        training.DistillConfig(
            teacher_file=teacher_file, temperature=distill.temperature, alpha=distill.alpha
        )
    )
    return finetune(SWIFT, ft, workdir, loss=loss)


def _dar_swift(config: PairEvalConfig, plain: Finetuned, ft: training.FinetuneConfig) -> Finetuned:
    workdir = config.cache_path / SWIFT_DAR
    hard_file = workdir / HARD_FILE
    if not hard_file.is_file():
        # CascadeBERT's difficulty labels: the plain Swift's own mistakes on its training set.
        logits, labels = training.training_set_logits(
            plain.model, plain.tokenizer, ft, batch_size=config.batch_size
        )
        _save_atomic(hard_file, logits.argmax(-1) != labels)
    loss = DifficultyAwareLoss(DarConfig(difficulty_file=hard_file))
    return finetune(SWIFT_DAR, ft, workdir, loss=loss)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.rename(path)
