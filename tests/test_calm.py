"""CALM-style decoder exits: +inf is the full model's greedy decoding, -inf is decoding with
the first layer only (skipped layers still get propagated keys and values), token for token."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elang_jax import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration
from elang_jax.exits import (
    CalmConfig,
    calm_generate_gpt2,
    calm_generate_t5,
    mean_layers_per_token,
    position_threshold,
)
from elang_jax.models._t5 import _masked_bias

N = 8


@pytest.fixture(scope="module")
def gpt2():
    model = GPT2LMHeadModel(GPT2Config.tiny(n_layer=3), rngs=nnx.Rngs(0))
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 90, (3, 6)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :2] = 0  # left padding
    ids[1, :2] = 0
    return model, ids, mask


@pytest.fixture(scope="module")
def t5():
    model = T5ForConditionalGeneration(T5Config.tiny(num_decoder_layers=3), rngs=nnx.Rngs(0))
    rng = np.random.RandomState(1)
    src = rng.randint(2, 90, (3, 6)).astype(np.int32)
    mask = np.ones_like(src)
    mask[2, 4:] = 0
    src[2, 4:] = 0
    return model, src, mask


def _gpt2_first_layer_reference(model, ids, mask, n):
    """Greedy decoding without a cache: the first token from the full model, later ones
    from layer 1 alone (its keys come from the embeddings, whichever layer a token left)."""
    tr = model.transformer
    seq, m = np.asarray(ids), np.asarray(mask)
    out = []
    for i in range(n):
        pos = np.where(m == 1, np.cumsum(m, 1) - 1, 0)
        if i == 0:
            logits = model(seq, m, pos).logits[:, -1]
        else:
            h = tr.embed(jnp.asarray(seq), jnp.asarray(pos))
            # Padding keys are masked; positions give causality.
            h = tr.run_layers(h, jnp.asarray(m), 0, 1, positions=jnp.asarray(pos)).last_hidden_state
            logits = model.logits(h)[:, -1]
        nxt = np.asarray(logits.argmax(-1), np.int32)
        out.append(nxt)
        seq = np.concatenate([seq, nxt[:, None]], 1)
        m = np.concatenate([m, np.ones((len(m), 1), m.dtype)], 1)
    return np.stack(out, 1)


def test_gpt2_infinite_threshold_is_generate(gpt2):
    model, ids, mask = gpt2
    out = calm_generate_gpt2(model, ids, mask, N, CalmConfig())
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(model.generate(ids, mask, N)))
    np.testing.assert_array_equal(np.asarray(out.layers), 3)


@pytest.mark.slow  # the intermediate-threshold test below exits early by default
def test_gpt2_always_exit_is_first_layer_decoding(gpt2):
    model, ids, mask = gpt2
    # eos id out of the way so that no row stops early.
    model = GPT2LMHeadModel(model.config.replace(eos_token_id=None), rngs=nnx.Rngs(0))
    out = calm_generate_gpt2(model, ids, mask, N, CalmConfig(threshold=-math.inf))
    ref = _gpt2_first_layer_reference(model, ids, mask, N)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    layers = np.asarray(out.layers)
    assert (layers[:, 0] == 3).all() and (layers[:, 1:] == 1).all()  # prefill runs all layers


def test_gpt2_intermediate_threshold_and_batch_invariance(gpt2):
    model, ids, mask = gpt2
    full = np.asarray(model.generate(ids, mask, N))
    cfg = CalmConfig(confidence="state", threshold=0.5)
    out = calm_generate_gpt2(model, ids, mask, N, cfg)
    for thr in (0.9, 0.99):
        o = calm_generate_gpt2(model, ids, mask, N, cfg, threshold=thr)
        assert 1.0 <= mean_layers_per_token(o) <= 3.0
    layers = np.asarray(out.layers)
    assert layers.min() >= 1 and layers.max() <= 3
    for r in range(len(ids)):
        one = calm_generate_gpt2(model, ids[r : r + 1], mask[r : r + 1], N, cfg)
        np.testing.assert_array_equal(np.asarray(one.tokens)[0], np.asarray(out.tokens)[r])
        np.testing.assert_array_equal(np.asarray(one.layers)[0], layers[r])
    assert full.shape == out.tokens.shape


def test_t5_infinite_threshold_is_generate(t5):
    model, src, mask = t5
    out = calm_generate_t5(model, src, mask, N)
    ref = model.generate(src, mask, max_new_tokens=N)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref))


@pytest.mark.slow  # the GPT-2 sibling above runs by default; same loop, same exit rule
def test_t5_always_exit_is_first_layer_decoding(t5):
    model, src, mask = t5
    out = calm_generate_t5(model, src, mask, N, CalmConfig(threshold=-math.inf))
    # Reference: teacher-forced decoder layer 1 alone, no cache, one token at a time.
    enc = model.encode(src, mask).last_hidden_state
    dec = model.decoder
    cross = dec.cross_kv(enc)
    cross_bias = jnp.where(
        jnp.asarray(mask)[:, None, None, :] == 1, 0.0, jnp.finfo(jnp.float32).min
    )
    tokens = np.full((len(src), 1), model.config.decoder_start_token_id, np.int32)
    for _ in range(N):
        t = tokens.shape[1]
        pos = jnp.arange(t)[None]
        causal = (pos[:, None, :] <= pos[:, :, None])[:, None]
        bias = _masked_bias(dec.relative_bias(pos, pos), causal)
        h, _, _ = dec.layers[0](
            model.embed(jnp.asarray(tokens)), bias, cross_kv=cross[0], cross_bias=cross_bias
        )
        nxt = np.asarray(model.lm_logits(dec.final_norm(h))[:, -1].argmax(-1), np.int32)
        tokens = np.concatenate([tokens, nxt[:, None]], 1)
    ref = tokens[:, 1:]
    # After EOS a row emits pad and runs no layer.
    after = np.cumsum(ref == model.config.eos_token_id, 1) - (ref == model.config.eos_token_id)
    ref = np.where(after > 0, model.config.pad_token_id, ref)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    np.testing.assert_array_equal(np.asarray(out.layers), np.where(after > 0, 0, 1))


def test_threshold_decay_and_bad_input(gpt2):
    assert float(position_threshold(0.8, 0.0, 10, 4.0)) == pytest.approx(0.8)
    assert float(position_threshold(0.8, 10.0, 10, 4.0)) == pytest.approx(
        0.72 + 0.08 * math.exp(-4)
    )
    with pytest.raises(ValueError, match="NaN"):
        CalmConfig(threshold=float("nan"))
    with pytest.raises(ValueError, match="confidence must be one of"):
        CalmConfig(confidence="bogus")
    with pytest.raises(ValueError, match="min_layers"):
        CalmConfig(min_layers=0)
    model, ids, mask = gpt2
    with pytest.raises(ValueError, match="NaN"):
        calm_generate_gpt2(model, ids, mask, N, threshold=float("nan"))
    with pytest.raises(ValueError, match="max_new_tokens"):
        calm_generate_gpt2(model, ids, mask, 0)
    with pytest.raises(ValueError, match="out of range|vocab"):
        calm_generate_gpt2(model, ids + 10_000, mask, N)
