"""The expert load report: each MoE layer's busiest-expert share, against a count by hand."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elang_jax.models import FeedForward
from elang_jax.moe import (
    ExpertLoad,
    MoEConfig,
    MoEFeedForward,
    expert_load,
    ffn_sites,
    format_expert_load,
)
from elang_jax.moe._routing import select


class _Layer(nnx.Module):
    def __init__(self, ffn: nnx.Module):
        self.ffn = ffn


class _Toy(nnx.Module):
    """An embedding and two residual MoE FFN layers: the smallest model with FFN sites
    (a BERT costs seconds of eager initialisation on this machine)."""

    def __init__(self):
        config = MoEConfig(num_experts=4, top_k=2, router="linear", impl="dense")
        self.emb = nnx.Param(jax.random.normal(jax.random.key(0), (50, 32)))
        self.layers = nnx.List(
            [
                _Layer(MoEFeedForward(32, 48, config, activation="relu", rngs=nnx.Rngs(i)))
                for i in range(2)
            ]
        )

    def __call__(self, input_ids, attention_mask, token_type_ids):
        # [b t] -> [b t d]
        h = self.emb[...][input_ids]
        for layer in self.layers:
            h = h + layer.ffn(h)
        return h


def _moefied(rng):
    model = _Toy()
    # layer 1: every token's first choice on expert 3 (a huge weight on its logit)
    ffn = ffn_sites(model)[1].ffn
    ffn.router_w[...] = jnp.zeros((32, 4)).at[:, 3].set(100.0)
    return model


class _Batch:
    def __init__(self, rng):
        self.input_ids = rng.randint(1, 50, (3, 7))
        self.attention_mask = np.ones((3, 7), np.int32)
        self.attention_mask[0, 5:] = 0
        self.token_type_ids = np.zeros((3, 7), np.int32)
        self.valid = np.array([True, True, False])


def test_expert_load_counts_every_layer(rng):
    model = _moefied(rng)
    x = [rng.randn(30, 32).astype(np.float32) for _ in range(2)]
    x[1] = np.abs(x[1])  # positive inputs: the 100-weight logit of expert 3 always wins
    loads = expert_load(model, ffn_inputs=x)
    assert [load.layer for load in loads] == [0, 1]
    for load, inputs in zip(loads, x, strict=True):
        ffn = ffn_sites(model)[load.layer].ffn
        ids = np.asarray(select(ffn.router_logits(jnp.asarray(inputs)), ffn.config)[0])
        want = np.bincount(ids.ravel(), minlength=4) / ids.size
        np.testing.assert_allclose(load.shares, want, atol=1e-12)
        assert load.busiest_share == pytest.approx(want.max())
        assert load.mean_share == 0.25 and load.tokens == 30 and load.top_k == 2
        assert load.max_over_mean == pytest.approx(4 * want.max())
    assert loads[1].busiest_share == 0.5  # every first choice: half the assignments
    table = format_expert_load(loads)
    assert "busiest share" in table and len(table.splitlines()) == 3
    assert ExpertLoad(**loads[0].to_json()) == loads[0]


def test_expert_load_from_batches_and_errors(rng):
    model = _moefied(rng)
    batch = _Batch(rng)
    loads = expert_load(model, [batch])
    assert [load.tokens for load in loads] == [5 + 7, 5 + 7]  # padding and invalid rows out
    with pytest.raises(ValueError, match="exactly one of"):
        expert_load(model)
    with pytest.raises(ValueError, match="2 FFN sites"):
        expert_load(model, ffn_inputs=[np.zeros((3, 32))])
    with pytest.raises(ValueError, match="non-empty"):
        expert_load(model, ffn_inputs=[np.zeros((0, 32)), np.zeros((3, 32))])
    dense = _Layer(FeedForward(32, 48, activation="relu", rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="no MoE FFN"):
        expert_load(dense, ffn_inputs=[np.zeros((3, 32))])
