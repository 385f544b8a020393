"""Sparse MoE feed-forward layers and MoEfication of dense FFNs.

One layer, `MoEFeedForward`, configured by a frozen `MoEConfig`, drops in as `layer.ffn` of
any backbone. Its implementation is chosen by `MoEImpl` (pure JAX by default); its router by
`RouterKind`; its gate weighting by `GateKind`. `moefy` converts a dense model's FFNs into
MoE FFNs (MoEfication: split neurons into experts with a `SplitMethod`, train MLP routers on
hidden states from `collect_ffn_inputs`).
"""

# MoEfication (_calibrate, _moefy, _split), the layer and its configuration (_config, _layer)
from elang_jax.moe._calibrate import calibrate_moefied
from elang_jax.moe._config import GateKind, MoEConfig, MoEImpl, RouterKind
from elang_jax.moe._layer import MoEFeedForward, MoEOutput, moe_aux_loss
from elang_jax.moe._moefy import (
    RouterTrainConfig,
    captured_mass,
    collect_ffn_inputs,
    ffn_sites,
    moefy,
    train_mlp_router,
)
from elang_jax.moe._split import SplitMethod, merge_experts, split

__all__ = [
    "GateKind",
    "MoEConfig",
    "MoEFeedForward",
    "MoEImpl",
    "MoEOutput",
    "RouterKind",
    "RouterTrainConfig",
    "SplitMethod",
    "calibrate_moefied",
    "captured_mass",
    "collect_ffn_inputs",
    "ffn_sites",
    "merge_experts",
    "moe_aux_loss",
    "moefy",
    "split",
    "train_mlp_router",
]
