"""GLUE fine-tuning of BERT-family classifiers: optimizer, train step, evaluation, the loop.

The hot paths (`make_train_step`, `evaluate`) are functional: the model is split once with
`nnx.split` into a static graph definition and state pytrees, the jitted function merges them
back inside the trace, and only arrays cross the `jax.jit` boundary (the cheapest per-call
path in NNX).

Resuming is exact without storing data-loader or RNG state: both are functions of the step.
  * data: step s is batch `s % batches_per_epoch` of epoch `s // batches_per_epoch`, and an
    epoch's order depends only on (seed, epoch);
  * dropout: the step's key is `fold_in(key(seed), s)`.
A checkpoint therefore holds the parameters, the optimizer state and the step.

Shape vocabulary: b batch rows, t padded length, c classes.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from elang_jax import data
from elang_jax.cascade._dar import difficulty_ranking_loss
from elang_jax.models import BertForSequenceClassification
from elang_jax.training._config import FinetuneConfig, Schedule

log = logging.getLogger(__name__)

# Parameter names that get no weight decay: every bias, and LayerNorm's scale (its bias is
# covered by "bias"). The usual BERT recipe.
_NO_DECAY_NAMES = ("bias", "scale")

CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"


# ----------------------------------------------------------------------------------------------
# Optimizer


def learning_rate_schedule(config: FinetuneConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `config.learning_rate`, then linear or cosine decay to 0.

    Args:
      config: gives the peak rate, warmup fraction and decay shape.
      total_steps: length of the whole schedule in optimizer steps.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps=}")
    warmup = int(round(config.warmup_ratio * total_steps))
    decay = max(total_steps - warmup, 1)
    if config.schedule is Schedule.COSINE:
        after = optax.cosine_decay_schedule(config.learning_rate, decay)
    else:
        after = optax.linear_schedule(config.learning_rate, 0.0, decay)
    if warmup == 0:
        return after
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate, warmup), after], [warmup]
    )


def weight_decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: all but biases and LayerNorm scales.

    Args:
      params: a parameter pytree (an `nnx.State` of `nnx.Param`s, or nested dicts).

    Returns:
      A pytree of bools with the structure of `params`.
    """

    def decays(path: tuple[Any, ...], _: Any) -> bool:
        # The parameter's name is the last dict key; an nnx Variable adds a `.value` attribute
        # key after it.
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return not names or str(names[-1]) not in _NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: FinetuneConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with warmup and decay, global-norm clipping, and no decay on biases/LayerNorm.

    Args:
      config: learning rate, schedule, weight decay and clipping settings.
      total_steps: length of the learning-rate schedule in steps.

    Returns:
      The optax transformation; its state is float32 like the parameters.
    """
    adamw = optax.adamw(
        learning_rate_schedule(config, total_steps),
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        weight_decay=config.weight_decay,
        mask=weight_decay_mask,
    )
    if config.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adamw)


# ----------------------------------------------------------------------------------------------
# Train and eval steps


def masked_cross_entropy(
    logits: Float[Array, "b c"], labels: Int[Array, " b"], valid: Bool[Array, " b"]
) -> Float[Array, ""]:
    """Mean softmax cross-entropy over the valid rows only (padding rows count for nothing).

    A batch without valid rows has loss 0, not NaN.
    """
    per_row = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    weight = valid.astype(jnp.float32)
    return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def _device_batch(batch: data.Batch) -> dict[str, np.ndarray]:
    # `index` stays on the host: the step never needs it.
    return dict(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        token_type_ids=batch.token_type_ids,
        labels=batch.labels,
        valid=batch.valid,
    )


TrainStep = Callable[[Any, Any, Any, Mapping[str, Any], Any], tuple[Any, Any, dict[str, Array]]]


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    dropout_key: jax.Array,
    dar: tuple[float, float] | None = None,
) -> TrainStep:
    """A jitted functional train step for a split classifier.

    Args:
      graphdef: the static part of `nnx.split(model, nnx.Param, ...)`.
      optimizer: the optax transformation (e.g. `make_optimizer`).
      dropout_key: base key; step `s` drops out with `fold_in(dropout_key, s)`, so a resumed
        run draws the same masks as an uninterrupted one.
      dar: (weight, margin) of CascadeBERT's difficulty-aware ranking loss, added to the
        cross-entropy; the batch then carries a [b] bool `hard`.

    Returns:
      `step_fn(params, rest, opt_state, batch, step) -> (params, opt_state, metrics)`, where
      `rest` is the non-parameter state from the split, `batch` a dict of [b t] input_ids,
      attention_mask, token_type_ids and [b] labels, valid, `step` an int32 scalar, and
      `metrics` holds the scalar `loss` and `grad_norm` (before clipping).
    """

    def step_fn(params, rest, opt_state, batch, step):
        key = jax.random.fold_in(dropout_key, step)

        def loss_fn(p):
            model = nnx.merge(graphdef, p, rest)
            # Built inside the differentiated function: nnx.Rngs counts its draws, and a
            # counter created outside this trace could not be updated from within it.
            rngs = nnx.Rngs(dropout=key)
            logits = model(
                batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], rngs=rngs
            ).logits
            loss = masked_cross_entropy(logits, batch["labels"], batch["valid"])
            if dar is not None:
                confidence = jax.nn.softmax(logits.astype(jnp.float32), -1).max(-1)
                pair_key = jax.random.fold_in(key, 1)
                loss = loss + dar[0] * difficulty_ranking_loss(
                    confidence, batch["hard"], pair_key, dar[1], batch["valid"]
                )
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    # No buffer donation: after a Ctrl-C that lands mid-step, the previous parameters must
    # still be alive to be checkpointed.
    return jax.jit(step_fn)


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef: nnx.GraphDef, state: Any, batch: Mapping[str, Array]) -> Float[Array, "b c"]:
    # graphdef is hashable, so every evaluation of the same architecture reuses one compiled
    # program per bucket.
    model = nnx.merge(graphdef, state)
    return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits


def classification_metrics(
    predictions: np.ndarray, labels: np.ndarray, metrics: Sequence[str] = ("accuracy",)
) -> dict[str, float]:
    """Accuracy and binary F1 (class 1 positive, as GLUE scores MRPC).

    Args:
      predictions: [n] predicted class ids.
      labels: [n] true class ids.
      metrics: names to compute, from `"accuracy"` and `"f1"`.

    Returns:
      `{name: value}` in [0, 1]. F1 is 0 when there is no true or predicted positive.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"need two [n] arrays, got {predictions.shape=} {labels.shape=}")
    out = {}
    for name in metrics:
        if name == "accuracy":
            out[name] = float(np.mean(predictions == labels)) if labels.size else 0.0
        elif name == "f1":
            tp = int(np.sum((predictions == 1) & (labels == 1)))
            fp = int(np.sum((predictions == 1) & (labels != 1)))
            fn = int(np.sum((predictions != 1) & (labels == 1)))
            out[name] = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        else:
            raise ValueError(f"unknown metric {name!r}; choose from 'accuracy', 'f1'")
    return out


def evaluate(
    model: nnx.Module,
    encoded: data.Encoded,
    batch_size: int,
    buckets: data.LengthBuckets | Sequence[int],
    *,
    metrics: Sequence[str] = ("accuracy",),
) -> dict[str, float]:
    """Scores a classifier on an encoded, labelled dataset (no dropout).

    Batches are grouped by length to skip padding; rows that only pad the last batch are
    dropped before scoring.

    Args:
      model: a sequence classifier (`BertForSequenceClassification`).
      encoded: the dataset (`elang_jax.data.encode_glue`), with labels.
      batch_size: rows per batch.
      buckets: padded lengths a batch may have.
      metrics: metric names (`"accuracy"`, `"f1"`); see `GLUE_TASKS[task].metrics`.

    Returns:
      The requested metrics, plus `loss` (mean cross-entropy) and `num_examples`.
    """
    if encoded.labels is None:
        raise ValueError("evaluate needs labels; this dataset has none (a test split?)")
    if not isinstance(buckets, data.LengthBuckets):
        buckets = data.LengthBuckets(tuple(buckets))
    graphdef, state = nnx.split(model)
    preds, labels, losses = [], [], []
    for batch in data.iterate_batches(
        encoded, batch_size, buckets, shuffle=False, sort_by_length=True
    ):
        logits = np.asarray(_logits(graphdef, state, _device_batch(batch)))
        keep = batch.valid
        preds.append(np.argmax(logits[keep], axis=-1))
        labels.append(batch.labels[keep])
        losses.append(
            np.asarray(
                optax.softmax_cross_entropy_with_integer_labels(logits[keep], batch.labels[keep])
            )
        )
    if not preds:
        return {**{m: 0.0 for m in metrics}, "loss": 0.0, "num_examples": 0}
    p, y = np.concatenate(preds), np.concatenate(labels)
    out: dict[str, Any] = classification_metrics(p, y, metrics)
    out["loss"] = float(np.mean(np.concatenate(losses)))
    out["num_examples"] = int(y.size)
    return out


# ----------------------------------------------------------------------------------------------
# The training loop


class _TrainState(NamedTuple):
    # Assigned as one tuple so that a Ctrl-C never sees parameters of step s + 1 with step s.
    params: Any
    opt_state: Any
    step: int


def _subset(examples: data.GlueExamples, limit: int | None) -> data.GlueExamples:
    if limit is None or limit >= len(examples):
        return examples
    return data.GlueExamples(
        text_a=examples.text_a[:limit],
        text_b=None if examples.text_b is None else examples.text_b[:limit],
        labels=None if examples.labels is None else examples.labels[:limit],
    )


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


def _encode(tokenizer: Any, config: FinetuneConfig, split: str, limit: int | None, vocab: int):
    examples = data.read_glue(config.task, split)
    if split == "train" and config.holdout:
        # The held-out examples calibrate thresholds later: they must never be trained on.
        kept, _ = data.calibration_split(
            examples, config.holdout, config.holdout_seed, config.holdout_kind
        )
        examples = data.select_examples(examples, kept)
    examples = _subset(examples, limit)
    encoded = data.encode_glue(
        tokenizer, examples, config.max_length, truncate=config.truncate, vocab_size=vocab
    )
    if encoded.num_truncated:
        log.warning(
            "%s %s: truncated %d of %d examples to %d tokens",
            config.task,
            split,
            encoded.num_truncated,
            len(encoded),
            config.max_length,
        )
    return encoded


def _difficulty(config: FinetuneConfig, n: int) -> np.ndarray | None:
    """Per-example "hard" flags for the difficulty-aware loss, checked against the train set."""
    if config.difficulty_file is None:
        return None
    hard = np.load(config.difficulty_file)
    if hard.shape != (n,) or hard.dtype != bool:
        raise ValueError(
            f"{config.difficulty_file} must hold [{n}] bool flags (one per training example "
            f"after the holdout), got {hard.dtype} {hard.shape}"
        )
    return hard


class _MetricsLog:
    """Appends one JSON object per line to workdir/metrics.jsonl (kept across resumes)."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: Mapping[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(dict(record), sort_keys=True) + "\n")


def _check_resumable(workdir: Path, config: FinetuneConfig) -> None:
    """Refuses to resume a checkpoint written under different training settings."""
    path = workdir / CONFIG_FILE
    # Without a checkpoint there is nothing to resume: a run that failed before its first
    # save may be restarted with other settings.
    if path.exists() and any((workdir / CHECKPOINT_DIR).glob("[0-9]*")):
        old = json.loads(path.read_text())
        new = config.trajectory_fields()
        diff = sorted(k for k in set(old) | set(new) if k in new and old.get(k) != new.get(k))
        if diff:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            raise ValueError(
                f"{workdir} holds a run with different settings ({details}); use a fresh "
                "workdir, or the same settings to resume"
            )
    path.write_text(json.dumps(config.trajectory_fields(), indent=2, sort_keys=True))


def train_and_evaluate(config: FinetuneConfig, workdir: str | Path) -> dict[str, Any]:
    """Fine-tunes, checkpointing and evaluating along the way; resumes from workdir if it can.

    Writes under `workdir`:
      * `checkpoints/<step>/`: orbax checkpoints of params, optimizer state and step (the
        latest `keep_checkpoints`), also written when interrupted with Ctrl-C;
      * `metrics.jsonl`: a line per logged step (step, loss, lr, examples_per_s, ...) and per
        evaluation (`"eval": <split>` plus the metrics); steps re-run after a resume are
        logged again;
      * `config.json`: the settings that decide the trajectory, checked on resume;
      * `final/`: the model at the last step as a Hugging Face directory with the tokenizer
        (also when `max_steps` stopped the run early; not after a Ctrl-C).

    Args:
      config: what and how to train.
      workdir: output directory; an existing checkpoint there is resumed exactly.

    Returns:
      The final evaluation metrics on `config.eval_split` (e.g. `accuracy`, `f1`, `loss`),
      plus `step`.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_resumable(workdir, config)
    metrics_log = _MetricsLog(workdir / METRICS_FILE)
    task = data.GLUE_TASKS[config.task]

    tokenizer_dir = config.tokenizer_dir or config.model_dir
    assert tokenizer_dir is not None  # checked by FinetuneConfig
    tokenizer = data.load_tokenizer(tokenizer_dir)
    model = build_model(config)
    vocab = model.config.vocab_size
    train_set = _encode(tokenizer, config, config.train_split, config.train_limit, vocab)
    hard = _difficulty(config, len(train_set))
    eval_set = _encode(tokenizer, config, config.eval_split, config.eval_limit, vocab)
    buckets = data.LengthBuckets(config.buckets)

    batches_per_epoch = data.num_batches(train_set, config.batch_size)
    total_steps = max(1, math.ceil(config.epochs * batches_per_epoch))
    end_step = total_steps if config.max_steps is None else min(total_steps, config.max_steps)

    schedule = learning_rate_schedule(config, total_steps)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer, train_step = _optimizer_and_train_step(graphdef, _step_key(config), total_steps)
    # Committed to the device like the arrays orbax restores: jit compiles separately for
    # committed and uncommitted arguments, and a resumed run would otherwise compile its
    # steps twice.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = _TrainState(*jax.device_put((params, optimizer.init(params)), device), step=0)

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
        state = _TrainState(restored.params, restored.opt_state, int(restored.meta["step"]))
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
    try:
        window_loss: list[Array] = []
        window_examples = 0
        window_start = time.perf_counter()
        while state.step < end_step:
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
                if hard is not None:
                    device_batch["hard"] = np.where(batch.valid, hard[batch.index], False)
                params, opt_state, step_metrics = train_step(
                    state.params,
                    rest,
                    state.opt_state,
                    device_batch,
                    np.int32(state.step),
                )
                state = _TrainState(params, opt_state, state.step + 1)
                window_loss.append(step_metrics["loss"])
                window_examples += batch.num_valid
                bar.update(1)
                if state.step % config.log_every == 0 or state.step == end_step:
                    # float() waits for the device: only here, so that the host prepares the
                    # next batches while the device computes.
                    loss = float(np.mean([float(x) for x in window_loss]))
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "step": state.step,
                        "epoch": round(state.step / batches_per_epoch, 4),
                        "loss": loss,
                        "lr": float(schedule(state.step - 1)),
                        "grad_norm": float(step_metrics["grad_norm"]),
                        "examples_per_s": window_examples / max(elapsed, 1e-9),
                        "steps_per_s": len(window_loss) / max(elapsed, 1e-9),
                    }
                    metrics_log.write(record)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}")
                    window_loss, window_examples = [], 0
                    window_start = time.perf_counter()
                if config.save_every and state.step % config.save_every == 0:
                    save(state)
                if config.eval_every and state.step % config.eval_every == 0:
                    scores, scores_step = run_eval(state), state.step
                    bar.write(f"step {state.step}: {_format(scores)}")
                    window_start = time.perf_counter()  # evaluation is not training time
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
    metrics_log.write({"step": state.step, "final": True, **scores})
    return {**scores, "step": state.step}


def _step_key(config: FinetuneConfig) -> FinetuneConfig:
    # The config with every field that cannot change the compiled step set to a fixed value.
    return config.replace(
        max_steps=None,
        eval_every=0,
        save_every=0,
        keep_checkpoints=1,
        log_every=1,
        progress=False,
        eval_limit=None,
    )


@functools.lru_cache(maxsize=4)
def _optimizer_and_train_step(
    graphdef: nnx.GraphDef, config: FinetuneConfig, total_steps: int
) -> tuple[optax.GradientTransformation, TrainStep]:
    # Compiling a train step takes seconds; runs in one process that share the model and the
    # optimizer settings (a run and the run resuming it, tests) share the compiled step.
    optimizer = make_optimizer(config, total_steps)
    dar = None if config.difficulty_file is None else (config.dar_weight, config.dar_margin)
    return optimizer, make_train_step(graphdef, optimizer, jax.random.key(config.seed), dar)


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
