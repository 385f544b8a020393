"""Speculative decoding from the models we have, batched and jitted with static shapes:
early-exit self-speculation (LayerSkip: the first layers and the shared head draft, the
full model verifies, greedy output unchanged), its training recipe, and Swift-to-Super
speculative cascades (exact, or lossy with a calibrated per-token deferral threshold)."""

from elang_jax.speculative._accept import accept_drafts
from elang_jax.speculative._cascade import (
    CascadeConfig,
    Deferral,
    TokenScores,
    calibrate_cascade,
    cascade_decode,
    cascade_token_scores,
    check_cascade,
    speculative_cascade_gpt2,
)
from elang_jax.speculative._config import SpeculativeConfig
from elang_jax.speculative._output import SpeculativeOutput
from elang_jax.speculative._self_spec import (
    check_speculative,
    self_speculative_decode,
    speculative_generate_gpt2,
)
from elang_jax.speculative._t5 import speculative_generate_t5, t5_self_speculative_decode
from elang_jax.speculative._train import (
    LayerSkipConfig,
    TrainLog,
    exit_agreement,
    exit_losses,
    layerskip_loss,
    train_decoder,
)

__all__ = [
    "CascadeConfig",
    "Deferral",
    "LayerSkipConfig",
    "SpeculativeConfig",
    "SpeculativeOutput",
    "TokenScores",
    "TrainLog",
    "accept_drafts",
    "calibrate_cascade",
    "cascade_decode",
    "cascade_token_scores",
    "check_cascade",
    "check_speculative",
    "exit_agreement",
    "exit_losses",
    "layerskip_loss",
    "self_speculative_decode",
    "speculative_cascade_gpt2",
    "speculative_generate_gpt2",
    "speculative_generate_t5",
    "t5_self_speculative_decode",
    "train_decoder",
]
