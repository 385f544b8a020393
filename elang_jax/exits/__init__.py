"""Multi-exit transformers: DeeBERT, PABEE, Right Tool for the Job (a batched exit step) and
CALM-style per-token exits in KV-cached decoders."""

from elang_jax.exits._calm import (
    CalmConfig,
    CalmOutput,
    Confidence,
    calm_generate_gpt2,
    calm_generate_t5,
    mean_layers_per_token,
    position_threshold,
)
from elang_jax.exits._config import ExitPolicy, LossWeighting, MultiExitConfig, loss_weights
from elang_jax.exits._multi_exit import (
    ExitHead,
    ExitStepOutput,
    MultiExit,
    MultiExitOutput,
    all_exit_logits,
    exit_loop,
)
from elang_jax.exits._policy import (
    ExitDecisions,
    calibrate_exits,
    candidate_settings,
    exit_scores,
    simulate_exits,
)
from elang_jax.exits._train import (
    ExitHeads,
    ExitTrainConfig,
    collect_features,
    dataset_exit_logits,
    fit_exit_temperatures,
    joint_loss,
    train_exit_heads,
    train_frozen_exits,
)

__all__ = [
    "CalmConfig",
    "CalmOutput",
    "Confidence",
    "calm_generate_gpt2",
    "calm_generate_t5",
    "mean_layers_per_token",
    "position_threshold",
    "ExitDecisions",
    "ExitHead",
    "ExitPolicy",
    "ExitStepOutput",
    "ExitHeads",
    "ExitTrainConfig",
    "LossWeighting",
    "MultiExit",
    "MultiExitConfig",
    "MultiExitOutput",
    "all_exit_logits",
    "calibrate_exits",
    "candidate_settings",
    "collect_features",
    "dataset_exit_logits",
    "exit_loop",
    "exit_scores",
    "fit_exit_temperatures",
    "joint_loss",
    "loss_weights",
    "simulate_exits",
    "train_exit_heads",
    "train_frozen_exits",
]
