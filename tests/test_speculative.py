"""Self-speculative decoding (LayerSkip draft-and-verify) equals the full model's greedy
decoding, token for token, for every row, every k, left padding and early EOS; a row's
output does not depend on its batch neighbours; bad configs and prompts fail clearly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elang_jax import GPT2Config, GPT2LMHeadModel
from elang_jax.models._decode import multi_token_loop
from elang_jax.speculative import SpeculativeConfig, speculative_generate_gpt2

N = 12
EOS = 24  # a token the damped tiny model emits mid-sequence, so a row stops early
PAD = 0


@pytest.fixture(scope="module", autouse=True)
def _fast_compiles():
    """Compiling is nearly all of these tests' time; XLA's optimizations change no token
    here (greedy and speculative decoding compile under the same setting)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def _damp_top_layers(model: GPT2LMHeadModel, start: int, scale: float) -> None:
    """Shrinks the residual updates of layers >= start, so that an early exit often (not
    always) agrees with the full model: acceptance between 0 and 1."""
    for layer in list(model.transformer.layers)[start:]:
        for lin in (layer.attention.output, layer.ffn.w_out):
            lin.kernel[...] = lin.kernel[...] * scale
            assert lin.bias is not None
            lin.bias[...] = lin.bias[...] * scale


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 90, (4, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    for row, pad in ((1, 2), (3, 5)):  # left padding of different lengths
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    return ids, mask


@pytest.fixture(scope="module")
def damped():
    model = GPT2LMHeadModel(GPT2Config.tiny(n_layer=3), rngs=nnx.Rngs(0))
    _damp_top_layers(model, 1, 0.3)
    return model


@pytest.mark.parametrize("k", [1, 2, 4])
def test_equals_greedy_every_row(damped, prompts, k):
    ids, mask = prompts
    want = np.asarray(damped.generate(ids, mask, N, eos_token_id=EOS, pad_token_id=PAD))
    assert (want == EOS).any(axis=1).sum() >= 1, "no row stops early: the EOS path is untested"
    out = speculative_generate_gpt2(
        damped,
        ids,
        mask,
        N,
        config=SpeculativeConfig(draft_layers=1, k=k),
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), want)
    # Partial acceptance: some drafts stand, some do not (both paths of the accept rule).
    assert 0.0 < out.acceptance_rate() < 1.0
    assert 1.0 < out.tokens_per_call() <= k + 1
    lengths = np.asarray(out.lengths)
    ends = np.array([list(r).index(EOS) + 1 if EOS in r else N for r in want])
    np.testing.assert_array_equal(lengths, ends)
    assert int(out.iterations) == int(np.max(np.asarray(out.calls)))


@pytest.mark.slow
def test_random_model_two_draft_layers(prompts):
    model = GPT2LMHeadModel(GPT2Config.tiny(n_layer=3), rngs=nnx.Rngs(1))
    ids, mask = prompts
    want = np.asarray(model.generate(ids, mask, N))
    out = speculative_generate_gpt2(
        model, ids, mask, N, config=SpeculativeConfig(draft_layers=2, k=3)
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), want)


@pytest.mark.slow
def test_exact_draft_accepts_everything(prompts):
    """With the top layer's updates zeroed the draft is the full model: every draft stands
    and each call emits k + 1 tokens (until the last columns)."""
    model = GPT2LMHeadModel(GPT2Config.tiny(n_layer=2), rngs=nnx.Rngs(2))
    _damp_top_layers(model, 1, 0.0)
    ids, mask = prompts
    k = 3
    out = speculative_generate_gpt2(
        model, ids, mask, N, config=SpeculativeConfig(draft_layers=1, k=k)
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(model.generate(ids, mask, N)))
    assert out.acceptance_rate() == 1.0
    # N - 1 tokens after the prefill's, k + 1 a call: ceil(11 / 4) = 3 calls per row.
    np.testing.assert_array_equal(np.asarray(out.calls), [3] * 4)


def test_batch_invariance(damped, prompts):
    ids, mask = prompts
    config = SpeculativeConfig(draft_layers=1, k=2)

    def run(rows):
        return speculative_generate_gpt2(
            damped, ids[rows], mask[rows], N, config=config, eos_token_id=EOS, pad_token_id=PAD
        )

    batch = run(np.arange(4))
    order = np.array([2, 0, 3, 1])
    shuffled = run(order)
    np.testing.assert_array_equal(np.asarray(shuffled.tokens), np.asarray(batch.tokens)[order])
    np.testing.assert_array_equal(np.asarray(shuffled.calls), np.asarray(batch.calls)[order])
    # A row next to copies of another row behaves as it does in the original batch.
    mixed = np.array([3, 0, 0, 0])
    alone = run(mixed)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(batch.tokens)[3])
    np.testing.assert_array_equal(np.asarray(alone.accepted)[0], np.asarray(batch.accepted)[3])


def test_bad_config_and_prompt(damped, prompts):
    ids, mask = prompts
    for bad, field in (
        (dict(draft_layers=1, k=0), "k must be >= 1"),
        (dict(draft_layers=0), "draft_layers must be >= 1"),
        (dict(draft_layers=1, k=True), "k must be a whole number"),
    ):
        with pytest.raises(ValueError, match=field):
            SpeculativeConfig(**bad)
    # The session's runtime type checks refuse a float first; without them, the config does.
    with pytest.raises((TypeError, ValueError), match="draft_layers"):
        SpeculativeConfig(draft_layers=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="draft_layers=3 must be below the model's 3 layers"):
        speculative_generate_gpt2(damped, ids, mask, N, config=SpeculativeConfig(draft_layers=3))
    # n_positions = 64: 7 + 54 fits plain greedy decoding, not with k = 4 look-ahead.
    with pytest.raises(ValueError, match="prompt \\+ max_new_tokens \\+ k"):
        speculative_generate_gpt2(damped, ids, mask, 54, config=SpeculativeConfig(draft_layers=1))
    with pytest.raises(ValueError, match="left-padded"):
        right = np.ones_like(mask)
        right[0, -1] = 0
        speculative_generate_gpt2(damped, ids, right, N, config=SpeculativeConfig.tiny())
    with pytest.raises(TypeError, match="SpeculativeConfig"):
        speculative_generate_gpt2(damped, ids, mask, N, config={"k": 2})  # type: ignore[arg-type]


def test_multi_token_loop_rules():
    """Counts, EOS cuts and the column limit, with a scripted step: row 0 emits 3 tokens a
    call, row 1 emits 2 with EOS (9) as the second of its second call, row 2 is done."""

    def step(produced, prev, state):
        # [b 3] tokens 10 * row + produced + j
        base = 10 * jnp.arange(3)[:, None] + produced[:, None] + jnp.arange(3)[None, :]
        tokens = jnp.where((jnp.arange(3)[:, None] == 1) & (base == 13), 9, base)
        return tokens.astype(jnp.int32), jnp.array([3, 2, 1], jnp.int32), state + 1, produced

    out = multi_token_loop(
        step,
        jnp.int32(0),
        first_token=jnp.array([5, 6, 7], jnp.int32),
        max_new_tokens=6,
        width=3,
        eos=9,
        pad=-1,
        done=jnp.array([False, False, True]),
        extras=jnp.zeros((3,), jnp.int32),
    )
    np.testing.assert_array_equal(
        np.asarray(out.tokens),
        [[5, 1, 2, 3, 4, 5, 6][:6], [6, 11, 12, 9, -1, -1], [-1] * 6],
    )
    np.testing.assert_array_equal(np.asarray(out.lengths), [6, 4, 0])
    np.testing.assert_array_equal(np.asarray(out.calls), [2, 2, 0])
    # extras summed over running calls: produced was 1 then 4 (row 0), 1 then 3 (row 1).
    np.testing.assert_array_equal(np.asarray(out.totals), [5, 4, 0])
