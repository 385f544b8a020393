"""Analytic FLOP model (multiply-add = 2 FLOPs) for the backbones: the only one.

Used to predict speed-ups before running (cascades, exits, pruning, MoE, composed systems)
and to report achieved GFLOP/s in benchmarks. Element-wise work (softmax, norms,
activations), gathers and top-k are left out: a few percent of the total at these widths.

Per layer with n tokens attending over s keys, d the width, i = heads x head width, f the
FFN width, h heads:
  projections  4 n d i + 4 s d i   (Q and O on the tokens, K and V on the keys)
  attention    4 n s i             (scores and mixing)
  FFN          4 n d f             (6 n d f gated)
  ACC scoring  2 h n s             (summing attention probabilities, `acc_score_flops`)
A classifier adds a pooler and a classifier on one row (`head_flops`: 2 d^2 + 2 d c).
"""

from __future__ import annotations

from typing import Any


def attention_flops(tokens: int, keys: int, d_model: int, inner: int) -> int:
    """One attention block for one sequence: Q/K/V/O projections plus scores and mixing."""
    projections = 2 * tokens * d_model * inner * 2 + 2 * keys * d_model * inner * 2
    return projections + 2 * 2 * tokens * keys * inner


def ffn_flops(tokens: int, d_model: int, d_ff: int, gated: bool = False) -> int:
    """A dense FFN on `tokens` tokens: two matmuls, three when gated."""
    return 2 * tokens * d_model * d_ff * (3 if gated else 2)


def layer_flops(
    tokens: int, keys: int, d_model: int, inner: int, d_ff: int, gated: bool = False
) -> int:
    """One transformer layer (attention block plus dense FFN) on `tokens` tokens of one
    sequence, attending over `keys` keys."""
    return attention_flops(tokens, keys, d_model, inner) + ffn_flops(tokens, d_model, d_ff, gated)


def router_flops(tokens: int, d_model: int, num_experts: int, router: str = "mlp") -> int:
    """A MoE router: MoEfication's MLP router tanh(x W1) W2 ([d e] then [e e]) or a linear
    one ([d e])."""
    out = 2 * tokens * d_model * num_experts
    if router == "mlp":
        out += 2 * tokens * num_experts * num_experts
    return out


def moe_ffn_flops(
    tokens: int, d_model: int, d_ff: int, num_experts: int, top_k: int, router: str = "mlp"
) -> int:
    """A MoE FFN of `num_experts` equal experts, `top_k` run per token, plus its router
    (`router_flops`)."""
    experts = ffn_flops(tokens, d_model, d_ff) * top_k // num_experts
    return experts + router_flops(tokens, d_model, num_experts, router)


def acc_score_flops(num_heads: int, tokens: int, keys: int) -> int:
    """ACC's token scores in a layer followed by a selection: the [h n s] attention
    probabilities summed per token (one multiply-add each, as the cost model counts)."""
    return 2 * num_heads * tokens * keys


def head_flops(d_model: int, num_labels: int) -> int:
    """A classification head on one sequence: the pooler ([d d] on one row) and the
    classifier ([d c]). Every exit of a multi-exit model runs one."""
    return 2 * d_model * d_model + 2 * d_model * num_labels


def lm_head_flops(tokens: int, d_model: int, vocab_size: int) -> int:
    """A language-model head ([d v]) on `tokens` positions."""
    return 2 * tokens * d_model * vocab_size


def encoder_layer_flops(config: Any, tokens: int) -> int:
    """One BERT-family layer on one sequence of `tokens` tokens."""
    d = config.hidden_size
    return layer_flops(tokens, tokens, d, d, config.intermediate_size)


def encoder_flops(config: Any, tokens: int, num_layers: int | None = None) -> int:
    """A BERT-family encoder (first `num_layers` layers) plus pooler on one sequence."""
    n = config.num_layers if num_layers is None else num_layers
    return n * encoder_layer_flops(config, tokens) + 2 * config.hidden_size**2


def classifier_flops(config: Any, tokens: int, num_layers: int | None = None) -> int:
    """Encoder plus a classification head (pooler and classifier) on one sequence."""
    n = config.num_layers if num_layers is None else num_layers
    return n * encoder_layer_flops(config, tokens) + head_flops(
        config.hidden_size, config.num_labels
    )


def t5_flops(config: Any, source_len: int, new_tokens: int) -> tuple[int, int]:
    """(encoder, decoder) analytic FLOPs of one example: greedy decoding of `new_tokens`
    tokens with the static KV cache of `t5_greedy` (every step attends over all
    `new_tokens` slots and over the `source_len` encoder positions), LM head included."""
    d, inner = config.d_model, config.num_heads * config.d_kv
    gated = config.is_gated
    encoder = config.num_layers * layer_flops(source_len, source_len, d, inner, config.d_ff, gated)
    n = new_tokens
    decoder_layer = (
        layer_flops(n, n, d, inner, config.d_ff, gated)  # self-attention over the static cache
        + attention_flops(n, source_len, d, inner)  # cross-attention (keys/values once)
    )
    decoder = config.num_decoder_layers * decoder_layer + lm_head_flops(n, d, config.vocab_size)
    return int(encoder), int(decoder)
