"""The two models of the pair experiment (`_eval_pair`): their configs and fine-tuning.

Each model is an `elang_jax.training.train_and_evaluate` run in `<cache>/<name>` (orbax
checkpoints, exact resume, `final/` as a Hugging Face directory with its tokenizer), the
demo's machinery: a finished run whose settings match (`training.run_settings`) is loaded
from `final/` without training; a half-finished one resumes; one with other settings is an
error.

A Swift fine-tuned elsewhere under the very same recipe (the demo's MiniLM Super, say) can be
adopted instead of trained again: `adopt_finished` copies its `final/` and metrics into the
cache when its stored settings equal ours apart from where the pretrained checkpoint was
unpacked, and that checkpoint's weights are byte-identical to ours.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from elang_jax import training
from elang_jax.checkpoints import sha256_of
from elang_jax.demo._sections import FinetuneSection
from elang_jax.models import BertConfig, BertForSequenceClassification
from elang_jax.training._finetune import CONFIG_FILE, FINAL_DIR, METRICS_FILE

log = logging.getLogger(__name__)

# The pretrained checkpoints the pair starts from when `PairModel.model_dir` is None.
DEFAULT_CHECKPOINTS = {"super": "mpnet_base_dir", "swift": "minilm_l6_dir"}
ADOPTED_FILE = "adopted_from.json"
# Wall seconds spent in `train_and_evaluate` on this run, summed over resumes: the rate the
# run logs per window is not usable (the host runs ahead of the device between logs).
SECONDS_FILE = "pair_seconds.json"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Distill:
    """Distillation of the Swift from the fine-tuned Super (`training.DistillationLoss`).

    Attributes:
      temperature: softmax temperature of the soft labels.
      alpha: weight of the hard-label cross-entropy (the soft labels get 1 - alpha).
    """

    temperature: float = 2.0
    alpha: float = 0.5

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature=}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill.alpha must be in [0, 1], got {self.alpha=}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairModel:
    """One model of the pair and how it is fine-tuned.

    Attributes:
      model_dir: the pretrained Hugging Face checkpoint; None: the default of its role
        (all-mpnet-base-v2 for Super, all-MiniLM-L6-v2 for Swift). Exclusive with
        `model_config`.
      model_config: random initialisation instead (tests); needs `tokenizer_dir`.
      tokenizer_dir: tokenizer directory; None: `model_dir`'s.
      num_layers: keep only the first this many layers; None: all.
      finetune: the recipe (the demo's `FinetuneSection`: training examples, epochs, batch
        size, learning rate, warmup, length buckets, checkpoint interval).
      distill: learn from the Super's soft labels as well (`Distill`; Swift only); None:
        the plain cross-entropy recipe.
    """

    # Mappings are converted in __post_init__ (like `DemoConfig`), so a runtime type checker
    # leaves __init__ alone.
    __no_type_check__ = True

    model_dir: str | None = None
    model_config: BertConfig | None = None
    tokenizer_dir: str | None = None
    num_layers: int | None = None
    finetune: FinetuneSection = dataclasses.field(default_factory=FinetuneSection)
    distill: Distill | None = None

    def __post_init__(self):
        if not isinstance(self.finetune, FinetuneSection):
            object.__setattr__(self, "finetune", FinetuneSection(**dict(self.finetune)))
        if self.distill is not None and not isinstance(self.distill, Distill):
            object.__setattr__(self, "distill", Distill(**dict(self.distill)))
        for name in ("model_dir", "tokenizer_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))
        if self.model_dir is not None and self.model_config is not None:
            raise ValueError(f"give model_dir or model_config, not both ({self.model_dir=})")
        if self.model_config is not None and self.tokenizer_dir is None:
            raise ValueError("a randomly initialised model (model_config) needs tokenizer_dir")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 or None, got {self.num_layers=}")


@dataclasses.dataclass
class Finetuned:
    """One fine-tuned classifier and how it was obtained.

    Attributes:
      model: the classifier, loaded from `<workdir>/final`.
      tokenizer: its tokenizer (saved with it).
      workdir: its training run directory.
      dev_accuracy: dev accuracy measured at the end of fine-tuning.
      seconds: wall time spent fine-tuning in this process (0 when loaded from the cache).
      cached: whether the finished model came from the cache.
      adopted_from: the run it was copied from (`adopt_finished`), if any.
      train_seconds: wall seconds the run spent in `train_and_evaluate` (compiling, saving
        checkpoints and the final dev evaluation included), over all its resumes; None when
        unknown (an adopted run).
      steps: training steps of the run.
    """

    model: BertForSequenceClassification
    tokenizer: Any
    workdir: Path
    dev_accuracy: float | None
    seconds: float
    cached: bool
    adopted_from: str | None
    train_seconds: float | None
    steps: int | None

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts (everything but the model and the tokenizer)."""
        return dict(
            workdir=str(self.workdir),
            dev_accuracy=self.dev_accuracy,
            seconds=self.seconds,
            cached=self.cached,
            adopted_from=self.adopted_from,
            train_seconds=self.train_seconds,
            steps=self.steps,
            num_layers=self.model.config.num_layers,
            hidden_size=self.model.config.hidden_size,
            model_type=self.model.config.model_type,
        )


def base_checkpoint(role: str, spec: PairModel) -> str | None:
    """The pretrained directory model `role` starts from (None for random initialisation)."""
    if spec.model_config is not None:
        return None
    if spec.model_dir is not None:
        return spec.model_dir
    from elang_jax import checkpoints

    return os.fspath(getattr(checkpoints, DEFAULT_CHECKPOINTS[role])())


def finetune_config(
    spec: PairModel,
    base: str | None,
    *,
    task: str,
    max_length: int,
    seed: int,
    eval_batch_size: int,
    eval_limit: int | None,
    holdout: int,
    holdout_seed: int,
    holdout_kind: Any,
    progress: bool,
) -> training.FinetuneConfig:
    """The `FinetuneConfig` of one model. Field for field the demo's
    (`elang_jax.demo._models.finetune_config`), so that a run of the demo's recipe has the
    demo's run settings and can be adopted (`adopt_finished`)."""
    source: dict[str, Any] = (
        dict(model_config=spec.model_config, tokenizer_dir=spec.tokenizer_dir)
        if base is None
        else dict(model_dir=base, tokenizer_dir=spec.tokenizer_dir)
    )
    ft = spec.finetune
    return training.FinetuneConfig(
        task=task,
        **source,
        num_layers=spec.num_layers,
        max_length=max_length,
        buckets=ft.buckets,
        batch_size=ft.batch_size,
        eval_batch_size=eval_batch_size,
        learning_rate=ft.learning_rate,
        warmup_ratio=ft.warmup_ratio,
        epochs=ft.epochs,
        seed=seed,
        train_limit=ft.train_examples,
        eval_limit=eval_limit,
        holdout=holdout,
        holdout_seed=holdout_seed,
        holdout_kind=holdout_kind,
        eval_every=0,
        save_every=ft.save_every,
        keep_checkpoints=1,
        log_every=10,
        progress=progress,
    )


def _records(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _train_seconds(workdir: Path) -> float:
    path = workdir / SECONDS_FILE
    return float(json.loads(path.read_text())["seconds"]) if path.is_file() else 0.0


def _same_weights(a: str | None, b: str | None) -> bool:
    # A checkpoint unpacked in two places is the same model when its weight files are equal.
    if a is None or b is None:
        return a == b
    name = "model.safetensors"
    fa, fb = Path(a, name), Path(b, name)
    return fa.is_file() and fb.is_file() and sha256_of(fa) == sha256_of(fb)


def adopt_finished(source: Path, workdir: Path, ft: training.FinetuneConfig) -> bool:
    """Copies the finished run in `source` into `workdir` if it ran our settings.

    Its stored settings must equal `ft`'s except `model_dir` (the same pretrained checkpoint
    unpacked elsewhere: its weights must be byte-identical to `ft.model_dir`'s). Copied:
    `final/` and `metrics.jsonl`; `config.json` is written with our settings, and
    `adopted_from.json` says where the run came from. Checkpoints are not copied.

    Returns:
      Whether the run was adopted (False, logged, when it does not qualify).
    """
    stored = training.stored_run_settings(source)
    ours = training.run_settings(ft)
    finals = [r for r in _records(source) if r.get("final")]
    if stored is None or not finals or not (source / FINAL_DIR / "config.json").is_file():
        log.info("%s holds no finished run: not adopted", source)
        return False
    diff = sorted(
        k for k in set(stored) | set(ours) if k != "model_dir" and stored.get(k) != ours.get(k)
    )
    if diff:
        log.warning("%s ran other settings (%s): not adopted", source, ", ".join(diff))
        return False
    if not _same_weights(stored.get("model_dir"), ft.model_dir):
        log.warning("%s started from other weights: not adopted", source)
        return False
    tmp = workdir.with_name(workdir.name + ".adopting")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copytree(source / FINAL_DIR, tmp / FINAL_DIR)
    shutil.copy2(source / METRICS_FILE, tmp / METRICS_FILE)
    (tmp / CONFIG_FILE).write_text(json.dumps(ours, indent=2, sort_keys=True))
    (tmp / ADOPTED_FILE).write_text(json.dumps({"source": str(source)}))
    if workdir.exists():
        shutil.rmtree(workdir)
    tmp.rename(workdir)
    return True


def finetune(
    name: str,
    ft: training.FinetuneConfig,
    workdir: Path,
    adopt: str | None = None,
    loss: training.LossHook | None = None,
) -> Finetuned:
    """Fine-tunes model `name` (with loss hook `loss`, default cross-entropy), or loads it
    when a finished run matches (after adopting the finished run in `adopt`, when given and
    it qualifies)."""
    from elang_jax.data import load_tokenizer
    from elang_jax.hf import from_pretrained

    if adopt is not None and loss is None and training.finished_run(workdir, ft) is None:
        adopt_finished(Path(adopt), workdir, ft)
    done, seconds, cached = training.train_or_reuse(
        ft, workdir, name=name, remedy="another cache_dir", loss=loss
    )
    if not cached:
        total = _train_seconds(workdir) + seconds
        (workdir / SECONDS_FILE).write_text(json.dumps({"seconds": total}))
    model = from_pretrained(workdir / FINAL_DIR, head="sequence_classification")
    assert isinstance(model, BertForSequenceClassification)
    adopted = workdir / ADOPTED_FILE
    return Finetuned(
        model=model,
        tokenizer=load_tokenizer(workdir / FINAL_DIR),
        workdir=workdir,
        dev_accuracy=done.get("accuracy"),
        seconds=seconds,
        cached=cached,
        adopted_from=json.loads(adopted.read_text())["source"] if adopted.is_file() else None,
        train_seconds=_train_seconds(workdir) or None,
        steps=done.get("step"),
    )
