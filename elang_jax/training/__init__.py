"""Fine-tuning: configuration, optimizer, train step, evaluation and the training loop.

Typical use::

    from elang_jax import training

    config = training.sst2_minilm()
    metrics = training.train_and_evaluate(config, "/tmp/ft_sst2")
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

# Training pieces.
from elang_jax.training._finetune import (
    build_model,
    classification_metrics,
    evaluate,
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
    masked_cross_entropy,
    train_and_evaluate,
    weight_decay_mask,
)

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
    # Training
    "build_model",
    "classification_metrics",
    "evaluate",
    "learning_rate_schedule",
    "make_optimizer",
    "make_train_step",
    "masked_cross_entropy",
    "train_and_evaluate",
    "weight_decay_mask",
]
