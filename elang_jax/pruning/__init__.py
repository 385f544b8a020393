"""ACC token pruning: drop low-contribution tokens layer by layer with static keep counts.

Typical use::

    from elang_jax import pruning

    schedule = pruning.KeepSchedule.from_speed(0.6, num_layers=6, config=pruning.AccConfig.bert())
    out = pruning.acc_classify(model, input_ids, attention_mask, token_type_ids, schedule)
    # or pick the knob for a FLOP target, offline:
    dims = pruning.LayerDims.of(model.config)
    schedule = pruning.tune_schedule(2.0, dims, {32: 640, 64: 192}, pruning.AccConfig.bert())
"""

# Calibration of the schedule, and the compiled pruned forward.
from elang_jax.pruning._calibrate import (
    acc_logits,
    batch_workload,
    calibrate_schedule,
    classifier_head_flops,
    schedule_candidates,
)

# Cost model and offline tuning.
from elang_jax.pruning._cost import LayerDims, predicted_speedup, stack_flops, tune_schedule

# Encoders (BERT-family classifiers, T5 encoder).
from elang_jax.pruning._encoders import PrunedOutput, acc_classify, acc_t5_encode

# GPT-2 prefill and generation.
from elang_jax.pruning._gpt2 import (
    PrefillOutput,
    PrunedCache,
    acc_decode_step,
    acc_generate,
    acc_prefill,
)

# Configuration and schedules.
from elang_jax.pruning._schedule import AccConfig, AccVariant, KeepSchedule, Profile

# Scores and selection.
from elang_jax.pruning._scores import acc_scores, gather_tokens, select_tokens
from elang_jax.pruning._selector import AccSelector

# Fine-tuning with elimination active.
from elang_jax.pruning._train import AccForward, acc_forward, finetune_acc, make_acc_train_step

__all__ = [
    # Configuration
    "AccConfig",
    "AccVariant",
    "KeepSchedule",
    "Profile",
    # Scores
    "AccSelector",
    "acc_scores",
    "gather_tokens",
    "select_tokens",
    # Cost
    "LayerDims",
    "predicted_speedup",
    "stack_flops",
    "tune_schedule",
    # Calibration
    "acc_logits",
    "batch_workload",
    "calibrate_schedule",
    "classifier_head_flops",
    "schedule_candidates",
    # Encoders
    "PrunedOutput",
    "acc_classify",
    "acc_t5_encode",
    # GPT-2
    "PrefillOutput",
    "PrunedCache",
    "acc_decode_step",
    "acc_generate",
    "acc_prefill",
    # Training
    "AccForward",
    "acc_forward",
    "finetune_acc",
    "make_acc_train_step",
]
