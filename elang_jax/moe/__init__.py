"""Sparse MoE feed-forward layers and MoEfication of dense FFNs.

One layer, `MoEFeedForward`, configured by a frozen `MoEConfig`, drops in as `layer.ffn` of
any backbone. Its implementation is chosen by `MoEImpl` (pure JAX by default); its router by
`RouterKind`; its gate weighting by `GateKind`. `moefy` converts a dense model's FFNs into
MoE FFNs (MoEfication: split neurons into experts with a `SplitMethod`, train MLP routers on
hidden states from `collect_ffn_inputs`). `relu_copy` and `relufy_glue` ReLU-fy a GELU
classifier first; `moefy_sweep` and `moefy_glue` score MoEfied copies over a grid;
`expert_load` reports how each layer's tokens spread over its experts (why MoE is or is not
fast on real data). `expert_parallel_apply` / `ExpertParallelFFN` run a layer with its
experts split over a mesh's "expert" axis (all-to-all token exchange).
"""

# MoEfication (_calibrate, _moefy, _split), the layer and its configuration (_config, _layer),
# ReLU-fication (_relufy), MoEfication sweeps (_sweep) and the expert load report (_load)
from elang_jax.moe._calibrate import calibrate_moefied
from elang_jax.moe._config import GateKind, MoEConfig, MoEImpl, RouterKind
from elang_jax.moe._expert_parallel import (
    ExpertParallelConfig,
    ExpertParallelFFN,
    ExpertParallelOutput,
    expert_parallel_apply,
)
from elang_jax.moe._layer import MoEFeedForward, MoEOutput, moe_aux_loss
from elang_jax.moe._load import ExpertLoad, expert_load, format_expert_load
from elang_jax.moe._moefy import (
    RouterTrainConfig,
    captured_mass,
    collect_ffn_inputs,
    ffn_sites,
    moefy,
    train_mlp_router,
)
from elang_jax.moe._relufy import relu_copy, relufy_glue, swap_metrics
from elang_jax.moe._split import SplitMethod, merge_experts, split
from elang_jax.moe._sweep import SweepConfig, moefy_glue, moefy_sweep

__all__ = [
    "ExpertLoad",
    "ExpertParallelConfig",
    "ExpertParallelFFN",
    "ExpertParallelOutput",
    "GateKind",
    "MoEConfig",
    "MoEFeedForward",
    "MoEImpl",
    "MoEOutput",
    "RouterKind",
    "RouterTrainConfig",
    "SplitMethod",
    "SweepConfig",
    "calibrate_moefied",
    "captured_mass",
    "collect_ffn_inputs",
    "expert_load",
    "expert_parallel_apply",
    "ffn_sites",
    "format_expert_load",
    "merge_experts",
    "moe_aux_loss",
    "moefy",
    "moefy_glue",
    "moefy_sweep",
    "relu_copy",
    "relufy_glue",
    "split",
    "swap_metrics",
    "train_mlp_router",
]
