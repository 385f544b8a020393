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


def moe_ffn_flops(
    tokens: int, d_model: int, d_ff: int, num_experts: int, top_k: int, router: str = "mlp"
) -> int:
    """A MoE FFN of `num_experts` equal experts, `top_k` run per token, plus its router:
    MoEfication's MLP router tanh(x W1) W2 ([d e] then [e e]) or a linear one ([d e])."""
    experts = ffn_flops(tokens, d_model, d_ff) * top_k // num_experts
    router_flops = 2 * tokens * d_model * num_experts
    if router == "mlp":
        router_flops += 2 * tokens * num_experts * num_experts
    return experts + router_flops


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


def t5_flops(config: Any, source_len: int, new_tokens: int) -> tuple[int, int]:
    """(encoder, decoder) analytic FLOPs of one example: greedy decoding of `new_tokens`
    tokens with the static KV cache of `t5_greedy` (every step attends over all
    `new_tokens` slots and over the `source_len` encoder positions), LM head included."""
    d, inner = config.d_model, config.num_heads * config.d_kv
    gated = config.is_gated
    encoder = config.num_layers * (
        attention_flops(source_len, source_len, d, inner)
        + ffn_flops(source_len, d, config.d_ff, gated)
    )
    n = new_tokens
    decoder_layer = (
        attention_flops(n, n, d, inner)  # self-attention over the static cache
        + attention_flops(n, source_len, d, inner)  # cross-attention (keys/values once)
        + ffn_flops(n, d, config.d_ff, gated)
    )
    decoder = config.num_decoder_layers * decoder_layer + 2 * n * d * config.vocab_size
    return int(encoder), int(decoder)
