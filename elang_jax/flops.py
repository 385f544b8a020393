"""Analytic FLOP model (multiply-add = 2 FLOPs) for the backbones.

Used to predict speed-ups before running (cascades, exits, pruning, MoE) and to report
achieved GFLOP/s in benchmarks. Element-wise work (softmax, norms, activations) is left
out: it is a few percent of the total at these widths.
"""

from __future__ import annotations

from typing import Any


def attention_flops(tokens: int, keys: int, d_model: int, inner: int) -> int:
    """One attention block for one sequence: Q/K/V/O projections plus scores and mixing."""
    projections = 2 * tokens * d_model * inner * 2 + 2 * keys * d_model * inner * 2
    return projections + 2 * 2 * tokens * keys * inner


def ffn_flops(tokens: int, d_model: int, d_ff: int, gated: bool = False) -> int:
    return 2 * tokens * d_model * d_ff * (3 if gated else 2)


def encoder_layer_flops(config: Any, tokens: int) -> int:
    """One BERT-family layer on one sequence of `tokens` tokens."""
    d = config.hidden_size
    return attention_flops(tokens, tokens, d, d) + ffn_flops(tokens, d, config.intermediate_size)


def encoder_flops(config: Any, tokens: int, num_layers: int | None = None) -> int:
    """A BERT-family encoder (first `num_layers` layers) plus pooler on one sequence."""
    n = config.num_layers if num_layers is None else num_layers
    return n * encoder_layer_flops(config, tokens) + 2 * config.hidden_size**2


def classifier_flops(config: Any, tokens: int, num_layers: int | None = None) -> int:
    """Encoder plus a classification head on one sequence."""
    return encoder_flops(config, tokens, num_layers) + 2 * config.hidden_size * config.num_labels
