"""GLUE fine-tuning of BERT-family classifiers: the training loop, checkpoints and export.

The loop is generic: what the forward pass runs and what the loss is are hooks
(`elang_jax.training.LossHook`, `ForwardHook`; plain cross-entropy by default), so that
method-specific objectives (CascadeBERT's difficulty-aware loss, ACC's elimination-active
forward) train through the same loop, with the same checkpoints and exact resume.

Resuming is exact without storing data-loader or RNG state: both are functions of the step.
  * data: step s is batch `s % batches_per_epoch` of epoch `s // batches_per_epoch`, and an
    epoch's order depends only on (seed, epoch);
  * dropout (and the loss hook's key): the step's key is `fold_in(key(seed), s)`;
  * the forward hook's per-step setting is a function of the step (`variant(step)`).
A checkpoint therefore holds the parameters, the optimizer state and the step.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from elang_jax import data
from elang_jax.models import BertForSequenceClassification
from elang_jax.training._config import FinetuneConfig
from elang_jax.training._data import batch_rows
from elang_jax.training._data import device_batch as _device_batch
from elang_jax.training._data import encode_split as _encode
from elang_jax.training._data import subset as _subset  # noqa: F401 - for tests
from elang_jax.training._eval import _logits, evaluate  # noqa: F401 - _logits: for tests
from elang_jax.training._hooks import (
    ForwardHook,
    LossHook,
    classifier_forward,
    cross_entropy_loss,
    example_arrays,
    hook_json,
    step_variant,
)
from elang_jax.training._optim import learning_rate_schedule, make_optimizer
from elang_jax.training._step import TrainStep, make_train_step

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


def build_model(config: FinetuneConfig) -> BertForSequenceClassification:
    """The classifier to fine-tune: from `config.model_dir`, or randomly from `model_config`.

    The compute dtype is bfloat16 when `config.bf16`; parameters are float32 either way.
    """
    num_labels = config.num_labels or data.GLUE_TASKS[config.task].num_labels
    overrides: dict[str, Any] = {}
    if config.dropout is not None:
        overrides.update(hidden_dropout=config.dropout, attention_dropout=config.dropout)
    if config.num_layers is not None:
        overrides["num_layers"] = config.num_layers
    dtype = jnp.bfloat16 if config.bf16 else None
    if config.model_dir is not None:
        from elang_jax.hf import from_pretrained

        model = from_pretrained(
            config.model_dir,
            head="sequence_classification",
            num_labels=num_labels,
            dtype=dtype,
            seed=config.seed,
            **overrides,
        )
        assert isinstance(model, BertForSequenceClassification)
        return model
    assert config.model_config is not None  # checked by FinetuneConfig
    model_config = config.model_config.replace(num_labels=num_labels, dtype=dtype, **overrides)
    return BertForSequenceClassification(model_config, rngs=nnx.Rngs(config.seed))


# ----------------------------------------------------------------------------------------------
# Run settings: what config.json records and a resume checks

# The hooks' entries in config.json: absent for the defaults, so that a plain run's settings
# are its config's trajectory fields alone.
_HOOK_KEYS = ("loss", "forward")
# Before the loss hooks, CascadeBERT's loss was three FinetuneConfig fields.
_LEGACY_DAR_KEYS = ("difficulty_file", "dar_weight", "dar_margin")


def run_settings(
    config: FinetuneConfig, *, loss: LossHook | None = None, forward: ForwardHook | None = None
) -> dict[str, Any]:
    """The settings that decide the parameters a run produces, as JSON values.

    The config's `trajectory_fields()`, plus `"loss"` and `"forward"` (each hook's
    `to_json()`, or its name) when a hook other than the default is given. A run writes them
    to `<workdir>/config.json` and resumes a checkpoint only if they match.
    """
    settings: dict[str, Any] = config.trajectory_fields()
    if loss is not None and loss is not cross_entropy_loss:
        settings["loss"] = hook_json(loss)
    if forward is not None and forward is not classifier_forward:
        settings["forward"] = hook_json(forward)
    # Through JSON and back: tuples become lists, as when read from the file.
    return json.loads(json.dumps(settings))


def stored_run_settings(workdir: str | Path) -> dict[str, Any] | None:
    """The settings recorded in `<workdir>/config.json` (see `run_settings`); None if absent.

    Files written before the loss hooks are read in today's form: their DAR fields become
    the `"loss"` entry (or nothing, for a run without DAR).
    """
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if not any(k in stored for k in _LEGACY_DAR_KEYS):
        return stored
    settings = {k: v for k, v in stored.items() if k not in _LEGACY_DAR_KEYS}
    if stored.get("difficulty_file") is not None:
        # The form of elang_jax.cascade._dar.DifficultyAwareLoss.to_json().
        settings["loss"] = {
            "name": "cascadebert_dar",
            "difficulty_file": stored["difficulty_file"],
            "weight": stored.get("dar_weight", 0.5),
            "margin": stored.get("dar_margin", 0.5),
        }
    return settings


def _check_resumable(workdir: Path, settings: Mapping[str, Any]) -> None:
    """Refuses to resume a checkpoint written under different training settings."""
    # Without a checkpoint there is nothing to resume: a run that failed before its first
    # save may be restarted with other settings.
    old = stored_run_settings(workdir)
    if old is not None and any((workdir / CHECKPOINT_DIR).glob("[0-9]*")):
        # Fields only the old file has were removed from the config since: not compared. The
        # hooks are compared whichever side has them.
        keys = set(settings) | set(_HOOK_KEYS)
        diff = sorted(k for k in keys if old.get(k) != settings.get(k))
        if diff:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
            raise ValueError(
                f"{workdir} holds a run with different settings ({details}); use a fresh "
                "workdir, or the same settings to resume"
            )
    (workdir / CONFIG_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------------------------
# The training loop


class _TrainState(NamedTuple):
    # Assigned as one tuple so that a Ctrl-C never sees parameters of step s + 1 with step s.
    params: Any
    opt_state: Any
    step: int


class _MetricsLog:
    """Appends one JSON object per line to workdir/metrics.jsonl (kept across resumes)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: Mapping[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(dict(record), sort_keys=True) + "\n")


def train_and_evaluate(
    config: FinetuneConfig,
    workdir: str | Path,
    *,
    loss: LossHook | None = None,
    forward: ForwardHook | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Fine-tunes, checkpointing and evaluating along the way; resumes from workdir if it can.

    Writes under `workdir`:
      * `checkpoints/<step>/`: orbax checkpoints of params, optimizer state and step (the
        latest `keep_checkpoints`), also written when interrupted with Ctrl-C;
      * `metrics.jsonl`: a line per logged step (step, loss, lr, examples_per_s, the loss
        hook's metrics, ...) and per evaluation (`"eval": <split>` plus the metrics); steps
        re-run after a resume are logged again;
      * `config.json`: the settings that decide the trajectory (`run_settings`), checked on
        resume;
      * `final/`: the model at the last step as a Hugging Face directory with the tokenizer
        (also when `max_steps` or `max_minutes` stopped the run early; not after a Ctrl-C).

    Args:
      config: what and how to train.
      workdir: output directory; an existing checkpoint there is resumed exactly.
      loss: the loss hook (`LossHook`); None: mean cross-entropy (`cross_entropy_loss`).
      forward: the forward hook (`ForwardHook`); None: the classifier's own forward.
        Evaluation always runs the plain classifier.
      mesh: train on this mesh (`elang_jax.sharding.make_mesh`): batches split over its
        data axis, parameters by `elang_jax.sharding`'s rules; a checkpoint written on one
        mesh resumes on any other. `batch_size` must divide over the data shards.

    Returns:
      The final evaluation metrics on `config.eval_split` (e.g. `accuracy`, `f1`, `loss`),
      plus `step`.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_resumable(workdir, run_settings(config, loss=loss, forward=forward))
    metrics_log = _MetricsLog(workdir / METRICS_FILE)
    task = data.GLUE_TASKS[config.task]

    tokenizer_dir = config.tokenizer_dir or config.model_dir
    assert tokenizer_dir is not None  # checked by FinetuneConfig
    tokenizer = data.load_tokenizer(tokenizer_dir)
    model = build_model(config)
    vocab = model.config.vocab_size
    train_set = _encode(tokenizer, config, config.train_split, config.train_limit, vocab)
    arrays = example_arrays(loss, len(train_set))
    eval_set = _encode(tokenizer, config, config.eval_split, config.eval_limit, vocab)
    buckets = data.LengthBuckets(config.buckets)

    batches_per_epoch = data.num_batches(train_set, config.batch_size)
    total_steps = max(1, math.ceil(config.epochs * batches_per_epoch))
    end_step = total_steps if config.max_steps is None else min(total_steps, config.max_steps)

    schedule = learning_rate_schedule(config, total_steps)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer, train_step = _optimizer_and_train_step(
        graphdef, _step_key(config), total_steps, loss, forward
    )
    put_batch: Any = dict
    if mesh is None:
        # Committed to the device like the arrays orbax restores: jit compiles separately for
        # committed and uncommitted arguments, and a resumed run would otherwise compile its
        # steps twice.
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        state = _TrainState(*jax.device_put((params, optimizer.init(params)), device), step=0)
    else:
        from elang_jax.sharding._train import train_on_mesh  # it imports this package

        key = jax.random.key(config.seed)  # the key of `_optimizer_and_train_step`
        placed = train_on_mesh(
            mesh, graphdef, params, rest, optimizer, key, loss=loss, forward=forward
        )
        rest, train_step, put_batch = placed.rest, placed.step_fn, placed.put_batch
        state = _TrainState(placed.params, placed.opt_state, step=0)

    manager = ocp.CheckpointManager(
        (workdir / CHECKPOINT_DIR).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
    )
    latest = manager.latest_step()
    if latest is not None:
        restored = manager.restore(
            latest,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(state.params)),
                opt_state=ocp.args.StandardRestore(_abstract(state.opt_state)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        state = _TrainState(
            restored["params"], restored["opt_state"], int(restored["meta"]["step"])
        )
        log.info("resumed %s from step %d", workdir, state.step)
    last_saved = state.step if latest is not None else -1

    def save(s: _TrainState) -> None:
        nonlocal last_saved
        if s.step == last_saved:
            return
        manager.save(
            s.step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(s.params),
                opt_state=ocp.args.StandardSave(s.opt_state),
                meta=ocp.args.JsonSave(
                    {"step": s.step, "epoch": s.step / batches_per_epoch, "task": config.task}
                ),
            ),
        )
        last_saved = s.step

    def run_eval(s: _TrainState) -> dict[str, Any]:
        scores = evaluate(
            nnx.merge(graphdef, s.params, rest),
            eval_set,
            config.eval_batch_size,
            buckets,
            metrics=task.metrics,
        )
        metrics_log.write({"step": s.step, "eval": config.eval_split, **scores})
        return scores

    log.info(
        "%s: %d train examples, %d batches per epoch, %d steps in the schedule, running to %d",
        config.task,
        len(train_set),
        batches_per_epoch,
        total_steps,
        end_step,
    )
    bar = _progress_bar(config, state.step, end_step)
    scores: dict[str, Any] = {}
    scores_step = -1
    deadline = None if config.max_minutes is None else time.monotonic() + 60 * config.max_minutes
    out_of_time = False
    try:
        window: list[dict[str, Any]] = []
        window_examples = 0
        window_start = time.perf_counter()
        while state.step < end_step and not out_of_time:
            epoch, start_batch = divmod(state.step, batches_per_epoch)
            batches = data.iterate_batches(
                train_set,
                config.batch_size,
                buckets,
                shuffle=True,
                seed=config.seed,
                epoch=epoch,
                start_batch=start_batch,
                sort_by_length=config.sort_by_length,
            )
            for batch in _take(batches, end_step - state.step):
                device_batch = _device_batch(batch)
                device_batch.update(batch_rows(arrays, batch))
                device_batch = put_batch(device_batch)
                params, opt_state, step_metrics = train_step(
                    state.params,
                    rest,
                    state.opt_state,
                    device_batch,
                    np.int32(state.step),
                    step_variant(forward, state.step),
                )
                state = _TrainState(params, opt_state, state.step + 1)
                window.append(step_metrics)
                window_examples += batch.num_valid
                bar.update(1)
                out_of_time = deadline is not None and time.monotonic() > deadline
                if state.step % config.log_every == 0 or state.step == end_step or out_of_time:
                    # float() waits for the device: only here, so that the host prepares the
                    # next batches while the device computes. The window's time is read after
                    # that wait, or it would measure dispatch rather than compute.
                    means = _window_means(window)
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "step": state.step,
                        "epoch": round(state.step / batches_per_epoch, 4),
                        **means,
                        "lr": float(np.asarray(schedule(state.step - 1))),
                        "grad_norm": float(step_metrics["grad_norm"]),
                        "examples_per_s": window_examples / max(elapsed, 1e-9),
                        "steps_per_s": len(window) / max(elapsed, 1e-9),
                    }
                    metrics_log.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                    window, window_examples = [], 0
                    window_start = time.perf_counter()
                if config.save_every and state.step % config.save_every == 0:
                    save(state)
                if config.eval_every and state.step % config.eval_every == 0:
                    scores, scores_step = run_eval(state), state.step
                    bar.write(f"step {state.step}: {_format(scores)}")
                    window_start = time.perf_counter()  # evaluation is not training time
                if out_of_time:
                    log.warning("max_minutes=%s reached at step %d", config.max_minutes, state.step)
                    break
        save(state)
    except KeyboardInterrupt:
        # Leave a checkpoint of the last completed step behind, then stop as asked.
        save(state)
        manager.wait_until_finished()
        manager.close()
        bar.close()
        log.warning("interrupted at step %d; checkpoint saved in %s", state.step, workdir)
        raise
    manager.wait_until_finished()
    manager.close()
    bar.close()

    if scores_step != state.step:
        scores = run_eval(state)
    from elang_jax.hf import save_pretrained

    save_pretrained(nnx.merge(graphdef, state.params, rest), workdir / FINAL_DIR, tokenizer)
    final = {"step": state.step, "final": True, **scores}
    if out_of_time:
        final["stopped_early"] = True
    metrics_log.write(final)
    return {**scores, "step": state.step}


def _window_means(window: list[dict[str, Any]]) -> dict[str, float]:
    # The loss and the loss hook's metrics, averaged over the steps since the last record.
    names = [k for k in window[-1] if k != "grad_norm"]
    return {k: float(np.mean([float(m[k]) for m in window])) for k in names}


def _step_key(config: FinetuneConfig) -> FinetuneConfig:
    # The config with every field that cannot change the compiled step set to a fixed value.
    return config.replace(
        max_steps=None,
        max_minutes=None,
        eval_every=0,
        save_every=0,
        keep_checkpoints=1,
        log_every=1,
        progress=False,
        eval_limit=None,
        data_source=data.DataSource.TSV,
        data_dir=None,
    )


@functools.lru_cache(maxsize=4)
def _optimizer_and_train_step(
    graphdef: nnx.GraphDef,
    config: FinetuneConfig,
    total_steps: int,
    loss: LossHook | None,
    forward: ForwardHook | None,
) -> tuple[optax.GradientTransformation, TrainStep]:
    # Compiling a train step takes seconds; runs in one process that share the model, the
    # optimizer settings and the hooks (a run and the run resuming it, tests) share the
    # compiled step.
    optimizer = make_optimizer(config, total_steps)
    key = jax.random.key(config.seed)
    return optimizer, make_train_step(graphdef, optimizer, key, loss=loss, forward=forward)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _take(it: Iterable[Any], n: int) -> Iterable[Any]:
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x


def _format(scores: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in scores.items()
    )


def _progress_bar(config: FinetuneConfig, initial: int, total: int) -> Any:
    from tqdm.auto import tqdm

    # A bar redrawn into a log file is noise: only draw it on a terminal.
    disable = not (config.progress and sys.stderr.isatty())
    return tqdm(total=total, initial=initial, disable=disable, unit="step", dynamic_ncols=True)
