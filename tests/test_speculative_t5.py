"""T5 decoder self-speculation equals `T5ForConditionalGeneration.generate`, token for token,
with source padding and early EOS; a row's output does not depend on its neighbours."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from elang_jax import T5Config, T5ForConditionalGeneration
from elang_jax.speculative import SpeculativeConfig, speculative_generate_t5

N = 12


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    """Compiling is nearly all of these tests' time; both decoders compile alike."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def t5():
    """A gated (v1.1) tiny T5 whose upper decoder layers are damped: the draft agrees with
    the full decoder sometimes; row 1 emits EOS (1) early, row 2's source is padded."""
    model = T5ForConditionalGeneration(T5Config.tiny_v1_1(num_decoder_layers=3), rngs=nnx.Rngs(1))
    for layer in list(model.decoder.layers)[1:]:
        assert layer.cross_attention is not None  # decoder layers have one
        for lin in (layer.attention.output, layer.ffn.w_out, layer.cross_attention.output):
            lin.kernel[...] = lin.kernel[...] * 0.5
    rng = np.random.RandomState(1)
    src = rng.randint(2, 90, (3, 6)).astype(np.int32)
    mask = np.ones_like(src)
    mask[2, 4:] = 0
    src[2, 4:] = 0
    return model, src, mask


def _check(model, src, mask, k):
    want = np.asarray(model.generate(src, mask, N))
    out = speculative_generate_t5(
        model, src, mask, N, config=SpeculativeConfig(draft_layers=1, k=k)
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    assert 0.0 < out.acceptance_rate() < 1.0
    return want, out


def test_t5_equals_greedy_and_batch_invariance(t5):
    model, src, mask = t5
    want, out = _check(model, src, mask, 2)
    assert (want == model.config.eos_token_id).any(axis=1).sum() >= 1
    order = np.array([2, 0, 1])
    shuffled = speculative_generate_t5(
        model, src[order], mask[order], N, config=SpeculativeConfig(draft_layers=1, k=2)
    )
    np.testing.assert_array_equal(np.asarray(shuffled.tokens), np.asarray(out.tokens)[order])
    with pytest.raises(ValueError, match="draft_layers=3 must be below"):
        speculative_generate_t5(model, src, mask, N, config=SpeculativeConfig(draft_layers=3))


@pytest.mark.parametrize("k", [1, 4])
def test_t5_every_k(t5, k):
    model, src, mask = t5
    _check(model, src, mask, k)
