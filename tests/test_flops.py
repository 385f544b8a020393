"""`elang_jax.flops`: the one FLOP model, and the cost models built on it."""

from __future__ import annotations

from elang_jax import flops, pruning
from elang_jax.models import BertConfig
from elang_jax.pruning import LayerDims, stack_flops


def test_head_and_classifier_flops():
    cfg = BertConfig.minilm_l6()
    d, c = cfg.hidden_size, cfg.num_labels
    # Pooler [d d] and classifier [d c] on one row.
    assert flops.head_flops(d, c) == 2 * d * d + 2 * d * c
    assert flops.classifier_flops(cfg, 64) == (
        cfg.num_layers * flops.encoder_layer_flops(cfg, 64) + flops.head_flops(d, c)
    )
    assert flops.classifier_flops(cfg, 64) - flops.encoder_flops(cfg, 64) == 2 * d * c
    assert pruning.classifier_head_flops(cfg) == flops.head_flops(d, c)


def test_layer_and_router_flops():
    assert flops.layer_flops(4, 6, 8, 8, 16) == flops.attention_flops(4, 6, 8, 8) + flops.ffn_flops(
        4, 8, 16
    )
    moe = flops.moe_ffn_flops(10, 8, 16, 4, 1, "mlp")
    assert moe == flops.ffn_flops(10, 8, 16) // 4 + flops.router_flops(10, 8, 4, "mlp")
    assert flops.router_flops(10, 8, 4, "linear") == 2 * 10 * 8 * 4
    assert flops.lm_head_flops(3, 8, 100) == 2 * 3 * 8 * 100


def test_pruning_cost_model_is_built_on_flops():
    dims = LayerDims(d_model=8, inner=8, d_ff=16, num_heads=2, num_layers=3)
    counts = (6, 4, 4)
    expected = sum(flops.layer_flops(n, n + 2, 8, 8, 16) for n in counts)
    expected += flops.acc_score_flops(2, 6, 8)  # only layer 0 is followed by a selection
    assert stack_flops(dims, counts, extra_keys=2) == expected
