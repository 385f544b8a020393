"""Choosing a keep schedule on a calibration split, and the compiled pruned forward.

Every candidate schedule comes from `tune_schedule` (a predicted FLOP speed-up in, a speed
knob out); each is run over the calibration examples, and the shared
`elang_jax.calibration.calibrate` picks one for the target with the unpruned model as the
reference. The classifier's padded batches are the workload of the cost model, so a
candidate's cost is what the pruned forward would pay on exactly those batches.

Shape vocabulary: b batch rows, t padded length, c classes, n examples.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from elang_jax import flops
from elang_jax.calibration import CalibrationTarget, OperatingPoint, calibrate
from elang_jax.data import Batch, restore_order
from elang_jax.models import BertForSequenceClassification
from elang_jax.pruning._cost import LayerDims, predicted_speedup, tune_schedule
from elang_jax.pruning._encoders import acc_classify
from elang_jax.pruning._schedule import AccConfig, KeepSchedule


@functools.partial(jax.jit, static_argnums=(0, 2))
def acc_logits(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    schedule: KeepSchedule | None,
    batch: Mapping[str, Int[Array, "b t"]],
) -> Float[Array, "b c"]:
    """Jitted logits of a split classifier (`nnx.split(model)`) under a keep schedule.

    `schedule` None runs the unpruned model (the reference of the same batches). One program
    is compiled per (batch shape, schedule). `batch` holds input_ids, attention_mask and
    token_type_ids.
    """
    model = nnx.merge(graphdef, state)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    if schedule is None:
        return model(ids, mask, types).logits.astype(jnp.float32)
    logits = acc_classify(model, ids, mask, types, schedule).logits
    assert logits is not None  # acc_classify always sets them
    return logits.astype(jnp.float32)


def classifier_head_flops(config) -> int:
    """Per-sequence FLOPs of a BERT-family classifier that pruning leaves alone: the pooler
    and the classifier on the [CLS] row (the cost model's `fixed_flops`,
    `elang_jax.flops.head_flops`)."""
    return flops.head_flops(config.hidden_size, config.num_labels)


def batch_workload(batches: Sequence[Batch]) -> dict[int, int]:
    """{padded length: rows} of some padded batches (padding rows included: they are run)."""
    workload: dict[int, int] = {}
    for b in batches:
        t = int(b.input_ids.shape[1])
        workload[t] = workload.get(t, 0) + int(b.input_ids.shape[0])
    return workload


def schedule_candidates(
    targets: Sequence[float],
    dims: LayerDims,
    workload: Mapping[int, int],
    config: AccConfig,
    *,
    fixed_flops: int = 0,
) -> list[KeepSchedule]:
    """Schedules for predicted FLOP speed-ups `targets`, mildest first, unreachable skipped.

    The unpruned schedule (rate 1) always comes first: it is the most conservative candidate.
    """
    out = [KeepSchedule.from_speed(1.0, dims.num_layers, config)]
    for target in sorted(set(float(x) for x in targets)):
        if target <= 1.0:
            continue
        try:
            s = tune_schedule(target, dims, workload, config, fixed_flops=fixed_flops)
        except ValueError:  # beyond what the floor and the unpruned first layers allow
            break
        if s.rate < out[-1].rate:
            out.append(s)
    return out


def calibrate_schedule(
    model: BertForSequenceClassification,
    batches: Sequence[Batch],
    labels: Int[np.ndarray, " n"],
    targets: Sequence[float],
    config: AccConfig,
    target: CalibrationTarget,
    *,
    reference_predictions: Int[np.ndarray, " n"] | None = None,
    progress=None,
) -> tuple[KeepSchedule, OperatingPoint]:
    """The cheapest keep schedule meeting `target` on calibration batches.

    Args:
      model: the classifier (fine-tuned with or without elimination: zero-shot works).
      batches: padded calibration batches (`iterate_batches`), every example once.
      labels: [n] the calibration labels, in dataset order.
      targets: predicted FLOP speed-ups to try (see `schedule_candidates`).
      config: how tokens are scored and protected.
      target: the calibration objective; the reference is the unpruned model.
      reference_predictions: [n] the unpruned model's predictions, if already at hand (saves
        a pass over the batches).
      progress: called with 1 after each candidate (e.g. a tqdm bar's `update`).

    Returns:
      (the chosen schedule, its operating point; `cost` is pruned / unpruned FLOPs).
    """
    labels = np.asarray(labels)
    cfg = model.config
    dims = LayerDims.of(cfg)
    head = classifier_head_flops(cfg)
    workload = batch_workload(batches)
    schedules = schedule_candidates(targets, dims, workload, config, fixed_flops=head)
    graphdef, state = nnx.split(model)
    correct, cost = [], []
    for s in schedules:
        if not s.prunes and reference_predictions is not None:
            correct.append(np.asarray(reference_predictions) == labels)
            cost.append(1.0)
            if progress is not None:
                progress(1)
            continue
        idx, preds = [], []
        for b in batches:
            inputs = dict(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                token_type_ids=b.token_type_ids,
            )
            logits = acc_logits(graphdef, state, s if s.prunes else None, inputs)
            idx.append(b.index[b.valid])
            preds.append(np.asarray(logits).argmax(-1)[b.valid])
        correct.append(restore_order(idx, preds, len(labels)) == labels)
        cost.append(1.0 / predicted_speedup(dims, s, workload, fixed_flops=head))
        if progress is not None:
            progress(1)
    op = calibrate(np.stack(correct), np.asarray(cost), correct[0], target, schedules)
    return op.setting, op
