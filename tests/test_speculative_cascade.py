"""Swift-to-Super speculative cascades (exact = the Super's greedy decoding, lossy with a
calibrated threshold), the shared acceptance rule, and LayerSkip's training recipe."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elang_jax import GPT2Config, GPT2LMHeadModel
from elang_jax.calibration import CalibrationTarget
from elang_jax.speculative import (
    CascadeConfig,
    LayerSkipConfig,
    TokenScores,
    accept_drafts,
    calibrate_cascade,
    cascade_token_scores,
    exit_losses,
    layerskip_loss,
    speculative_cascade_gpt2,
    train_decoder,
)

N = 10


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    """Compiling is nearly all of these tests' time; XLA's optimizations change no token
    here (greedy and speculative decoding compile under the same setting)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def pair():
    """A 3-layer Super and a 1-layer Swift sharing the Super's embeddings and first layer,
    so that the Swift agrees with the Super often but not always."""
    sup = GPT2LMHeadModel(GPT2Config.tiny(n_layer=3), rngs=nnx.Rngs(0))
    for layer in list(sup.transformer.layers)[1:]:
        for lin in (layer.attention.output, layer.ffn.w_out):
            lin.kernel[...] = lin.kernel[...] * 0.3
    swift = GPT2LMHeadModel(GPT2Config.tiny(n_layer=1), rngs=nnx.Rngs(1))
    state = nnx.state(sup)
    swift_state = nnx.state(swift)
    swift_state["transformer"]["layers"][0] = state["transformer"]["layers"][0]
    for name in ("wte", "wpe", "ln_f"):
        swift_state["transformer"][name] = state["transformer"][name]
    nnx.update(swift, swift_state)
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 90, (4, 6)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    return sup, swift, ids, mask


def test_exact_cascade_equals_super_greedy(pair):
    sup, swift, ids, mask = pair
    eos = 24
    want = np.asarray(sup.generate(ids, mask, N, eos_token_id=eos, pad_token_id=0))
    out = speculative_cascade_gpt2(
        sup, swift, ids, mask, N, config=CascadeConfig(k=3), eos_token_id=eos, pad_token_id=0
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    assert 0.0 < out.acceptance_rate() < 1.0
    # Lossy with -inf: every draft stands (k + 1 tokens a call), compiled program reused.
    lossy = speculative_cascade_gpt2(
        sup,
        swift,
        ids,
        mask,
        N,
        config=CascadeConfig(k=3),
        threshold=-math.inf,
        eos_token_id=eos,
        pad_token_id=0,
    )
    assert lossy.acceptance_rate() == 1.0
    # Lossy with a middling threshold lies in between and its first token is the Super's.
    mid = speculative_cascade_gpt2(
        sup,
        swift,
        ids,
        mask,
        N,
        config=CascadeConfig(k=3),
        threshold=0.05,
        eos_token_id=eos,
        pad_token_id=0,
    )
    assert out.acceptance_rate() <= mid.acceptance_rate() <= 1.0
    np.testing.assert_array_equal(np.asarray(mid.tokens)[:, 0], want[:, 0])


def test_cascade_checks(pair):
    sup, swift, ids, mask = pair
    other = GPT2LMHeadModel(GPT2Config.tiny(vocab_size=50, n_layer=1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_cascade_gpt2(sup, other, ids, mask, N, config=CascadeConfig())
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        CascadeConfig(k=0)
    with pytest.raises(ValueError, match="deferral must be one of"):
        CascadeConfig(deferral="entropy")
    with pytest.raises(ValueError, match="prompt \\+ max_new_tokens \\+ k"):
        speculative_cascade_gpt2(sup, swift, ids, mask, 56, config=CascadeConfig(k=4))


@pytest.mark.slow
def test_token_scores(pair):
    sup, swift, _, _ = pair
    seq = np.random.RandomState(1).randint(0, 98, (2, 6 + N)).astype(np.int32)
    for deferral in ("super_prob", "swift_prob"):
        scores = cascade_token_scores(sup, swift, seq, 6, deferral)
        assert scores.score.shape == scores.agrees.shape == (2 * N,)
        assert 0.0 < scores.agrees.mean() < 1.0
        assert np.all((scores.score > 0) & (scores.score <= 1))


def test_calibrated_threshold():
    # Synthetic calibration set: disagreements all score below 0.3.
    rng = np.random.RandomState(0)
    s = rng.uniform(0, 1, 2000)
    agrees = (s > 0.3) | (rng.uniform(0, 1, 2000) < 0.5)
    point = calibrate_cascade(
        TokenScores(score=s, agrees=agrees),
        CalibrationTarget(objective="guarantee", epsilon=0.05, delta=0.1),
    )
    assert 0.0 < point.setting < 0.35
    wrong = np.mean((s >= point.setting) & ~agrees)
    assert wrong <= 0.05
    exact = calibrate_cascade(TokenScores(score=s, agrees=agrees), CalibrationTarget(epsilon=0.0))
    assert np.mean((s >= exact.setting) & ~agrees) == 0.0


def test_accept_drafts_rule():
    drafts = jnp.array([[1, 2, 3], [1, 9, 3], [7, 2, 3]], jnp.int32)
    verified = jnp.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]], jnp.int32)
    tokens, counts, accepted = accept_drafts(drafts, verified)
    np.testing.assert_array_equal(np.asarray(accepted), [3, 1, 0])
    np.testing.assert_array_equal(np.asarray(counts), [4, 2, 1])
    np.testing.assert_array_equal(np.asarray(tokens)[1, :2], [1, 2])
    # Lossy: row 2's first draft stands by the deferral rule, then the verifier's token.
    also = jnp.array([[False] * 3, [False] * 3, [True, False, False]])
    tokens, counts, _ = accept_drafts(drafts, verified, also)
    np.testing.assert_array_equal(np.asarray(tokens)[2, :3], [7, 2, 3])
    assert int(counts[2]) == 4


def test_layerskip_weights_and_dropout():
    config = LayerSkipConfig(exit_scale=1.0, max_dropout=0.3, warmup_steps=2)
    w = config.exit_weights(4)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    assert np.all(np.diff(w) > 0)
    np.testing.assert_allclose(config.dropout_rates(4), [0.0, 0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(LayerSkipConfig.plain().exit_weights(3), [0, 0, 1])
    with pytest.raises(ValueError, match="max_dropout"):
        LayerSkipConfig(max_dropout=1.0)
    with pytest.raises(ValueError, match="exit_scale"):
        LayerSkipConfig(exit_scale=-1.0)


@pytest.mark.slow
def test_layerskip_recipe_trains():
    config = LayerSkipConfig(exit_scale=1.0, max_dropout=0.3, warmup_steps=2)
    model = GPT2LMHeadModel(GPT2Config.tiny(n_layer=2), rngs=nnx.Rngs(0))
    # One repeated block: the loss must fall when it is learned.
    block = np.random.RandomState(0).randint(0, 98, (4, 16)).astype(np.int32)
    before = float(layerskip_loss(model, jnp.asarray(block), config, None))
    log = train_decoder(model, iter([block] * 20), config, steps=20, log_every=10)
    after = float(layerskip_loss(model, jnp.asarray(block), config, None))
    assert log.steps == 20 and len(log.losses) == 2
    assert after < before - 0.5
    losses = exit_losses(model, jnp.asarray(block))
    assert losses.shape == (2,)
    # Dropout draws differ by key; without a key the loss is deterministic.
    a = layerskip_loss(model, jnp.asarray(block), config, jax.random.key(0))
    assert np.isfinite(float(a))
