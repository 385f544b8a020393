"""Fine-tuning: configuration, optimizer, train step and its hooks, evaluation, the loop.

Typical use::

    from elang_jax import training

    config = training.sst2_minilm()
    metrics = training.train_and_evaluate(config, "/tmp/ft_sst2")

The loss and the forward pass are hooks of the loop (`LossHook`, `ForwardHook`): plain
cross-entropy by default; method-specific objectives plug in, e.g.
`train_and_evaluate(config, workdir, loss=DifficultyAwareLoss(DarConfig(...)))`.
"""

# Configuration and presets.
from elang_jax.training._config import (
    FinetuneConfig,
    Schedule,
    config_json,
    sst2_minilm,
    tiny,
)

# CascadeBERT difficulty labels.
from elang_jax.training._difficulty import (
    checkpoint_predictions,
    difficulty_labels,
    load_run_config,
)

# Distillation from a teacher's logits.
from elang_jax.training._distill import DistillationLoss, DistillConfig, training_set_logits

# Evaluation.
from elang_jax.training._eval import classification_metrics, evaluate

# The training loop and the settings it records.
from elang_jax.training._finetune import (
    build_model,
    run_settings,
    stored_run_settings,
    train_and_evaluate,
)

# Hooks: the loss and the forward pass of a train step.
from elang_jax.training._hooks import (
    ForwardHook,
    LossHook,
    classifier_forward,
    cross_entropy_loss,
    masked_cross_entropy,
)

# Optimizer.
from elang_jax.training._optim import learning_rate_schedule, make_optimizer, weight_decay_mask

# Fine-tuned runs reused from a cache directory.
from elang_jax.training._reuse import finished_run, release_compiled, train_or_reuse

# Train step.
from elang_jax.training._step import make_train_step

__all__ = [
    # Configuration
    "FinetuneConfig",
    "Schedule",
    "config_json",
    "sst2_minilm",
    "tiny",
    # Difficulty labels
    "checkpoint_predictions",
    "difficulty_labels",
    "load_run_config",
    # Distillation
    "DistillConfig",
    "DistillationLoss",
    "training_set_logits",
    # Hooks
    "ForwardHook",
    "LossHook",
    "classifier_forward",
    "cross_entropy_loss",
    "masked_cross_entropy",
    # Training
    "build_model",
    "classification_metrics",
    "evaluate",
    "learning_rate_schedule",
    "make_optimizer",
    "make_train_step",
    "finished_run",
    "run_settings",
    "release_compiled",
    "train_or_reuse",
    "stored_run_settings",
    "train_and_evaluate",
    "weight_decay_mask",
]
