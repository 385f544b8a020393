"""T5 (v1.0 and v1.1): parity with transformers' PyTorch T5, greedy generation, checkpoint I/O,
the encoder's layer-range interface, input errors."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from elang_jax.hf import CheckpointMismatchError, from_pretrained, save_pretrained  # noqa: E402
from elang_jax.models._t5 import (  # noqa: E402
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
    relative_position_bucket,
    t5_greedy,
)
from elang_jax.testing import tolerances  # noqa: E402

ATOL, _ = tolerances(jnp.float32)  # max abs difference allowed in float32 parity checks
NEW_TOKENS = 20

# Same sizes as T5Config.tiny(): two encoder layers, three decoder layers (asymmetric, so a
# swapped encoder/decoder layer count cannot pass).
SMALL = dict(
    vocab_size=99,
    d_model=32,
    d_kv=8,
    d_ff=37,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=20,
    decoder_start_token_id=0,
)

# v1_0: relu, tied and scaled head. v1_1: gated GELU with its own lm_head (as on the hub).
# v1_1_hf_tied: what transformers 5 itself builds from tie_word_embeddings=False: no scaling,
# but the head tied to `shared` and absent from the checkpoint.
VARIANTS = {
    "v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "v1_1_hf_tied": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def _randomize(hf_model, seed: int) -> None:
    """Fan-in scaled random weights: transformers' own initialisation gives a model that
    repeats the pad token, which would make the generation check vacuous. Embeddings at
    d_model**-0.5 keep the logits of an unscaled tied head (v1_1_hf_tied) O(1), so that the
    absolute float32 tolerance means the same for every variant."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf_model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif "relative_attention_bias" in name:
                p.copy_(noise)
            else:  # the embeddings and the [out, in] Linear weights
                p.copy_(noise * p.shape[1] ** -0.5)


def _build(variant: str, tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.T5Config(**SMALL, **VARIANTS[variant])
    cfg._attn_implementation = "eager"  # sdpa cannot return attention probabilities
    hf = transformers.T5ForConditionalGeneration(cfg).eval()
    if variant == "v1_1":
        hf.lm_head.weight = torch.nn.Parameter(torch.empty_like(hf.lm_head.weight))
    _randomize(hf, seed=1)
    path = tmp_path_factory.mktemp(variant) / "hf"
    hf.save_pretrained(path)
    return variant, hf, path, from_pretrained(path)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """variant -> (variant, transformers model, its checkpoint directory, our model loaded
    from it), each built once per module."""
    built = {}

    def get(variant: str):
        if variant not in built:
            built[variant] = _build(variant, tmp_path_factory)
        return built[variant]

    return get


@pytest.fixture(params=list(VARIANTS))
def t5(request, build):
    return build(request.param)


@pytest.fixture
def t5_v1_0(build):
    return build("v1_0")


@pytest.fixture
def t5_v1_1(build):
    return build("v1_1")


def _inputs(b: int = 3, s: int = 14, t: int = 9):
    rng = np.random.RandomState(0)
    ids = rng.randint(2, 99, size=(b, s))
    mask = np.ones_like(ids)
    mask[1, 8:] = 0  # a padded row
    ids[mask == 0] = 0
    dec = rng.randint(2, 99, size=(b, t))
    dec[:, 0] = 0  # decoder start token
    return ids.astype(np.int32), mask.astype(np.int32), dec.astype(np.int32)


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def test_relative_position_bucket_matches_transformers():
    rel = np.arange(-300, 301)
    for num_buckets, max_distance in [(8, 20), (32, 128), (16, 20)]:
        for bidirectional in (True, False):
            want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
                torch.tensor(rel),
                bidirectional=bidirectional,
                num_buckets=num_buckets,
                max_distance=max_distance,
            ).numpy()
            got = relative_position_bucket(
                jnp.asarray(rel),
                bidirectional=bidirectional,
                num_buckets=num_buckets,
                max_distance=max_distance,
            )
            np.testing.assert_array_equal(np.asarray(got), want)


def test_config_read_from_hf(t5):
    variant, hf, _, model = t5
    assert isinstance(model, T5ForConditionalGeneration)
    if variant == "v1_0":
        assert model.config == T5Config.tiny()
        assert model.lm_head is None
    else:
        assert model.config == T5Config.tiny_v1_1()
        assert model.lm_head is not None
    # For transformers' tied v1.1 model, the untied head was loaded from shared.weight.
    head = hf.lm_head.weight.detach().numpy()
    if model.lm_head is not None:
        np.testing.assert_array_equal(np.asarray(model.lm_head.kernel[...]).T, head)


def test_teacher_forced_parity(t5):
    _, hf, _, model = t5
    ids, mask, dec = _inputs()
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            decoder_input_ids=torch.tensor(dec, dtype=torch.long),
            output_hidden_states=True,
            output_attentions=True,
        )
    out = model(
        jnp.asarray(ids),
        jnp.asarray(mask),
        jnp.asarray(dec),
        output_hidden_states=True,
        output_attentions=True,
    )
    b, s, t, c = 3, ids.shape[1], dec.shape[1], model.config
    chex.assert_shape(out.logits, (b, t, c.vocab_size))
    assert out.logits.dtype == jnp.float32
    assert _max_diff(out.logits, ref.logits) < ATOL

    enc = out.encoder
    assert len(enc.hidden_states) == c.num_layers + 1
    assert len(enc.attentions) == c.num_layers
    chex.assert_shape(enc.hidden_states, (b, s, c.d_model))
    chex.assert_shape(enc.attentions, (b, c.num_heads, s, s))
    np.testing.assert_array_equal(enc.hidden_states[-1], enc.last_hidden_state)
    assert _max_diff(enc.last_hidden_state, ref.encoder_last_hidden_state) < ATOL
    for ours, theirs in zip(enc.hidden_states, ref.encoder_hidden_states, strict=True):
        assert _max_diff(ours, theirs) < ATOL
    for ours, theirs in zip(enc.attentions, ref.encoder_attentions, strict=True):
        assert _max_diff(ours, theirs) < ATOL

    assert len(out.hidden_states) == c.num_decoder_layers + 1
    chex.assert_shape(out.attentions, (b, c.num_heads, t, t))
    for ours, theirs in zip(out.hidden_states, ref.decoder_hidden_states, strict=True):
        assert _max_diff(ours, theirs) < ATOL
    for ours, theirs in zip(out.attentions, ref.decoder_attentions, strict=True):
        assert _max_diff(ours, theirs) < ATOL


def test_cached_decode_matches_teacher_forcing(t5):
    _, _, _, model = t5
    ids, mask, dec = _inputs()
    full = model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec)).logits
    enc = model.encode(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state
    cache = model.init_cache(3, 12)
    # A 5-token prefill, then single tokens: the cache is passed in and returned, never mutated.
    first = model.decode(jnp.asarray(dec[:, :5]), enc, jnp.asarray(mask), cache, 0)
    assert first.cache is not cache and first.cache.cross_attention is not None
    logits, cache = [first.logits], first.cache
    for i in range(5, dec.shape[1]):
        step = model.decode(jnp.asarray(dec[:, i : i + 1]), None, jnp.asarray(mask), cache, i)
        logits.append(step.logits)
        cache = step.cache
    assert _max_diff(jnp.concatenate(logits, axis=1), full) < ATOL


def _hf_greedy(hf, ids, mask, pad_id: int, **kw) -> np.ndarray:
    gen = hf.generation_config
    # Nothing but argmax: no minimum length, no penalties, no forced tokens.
    assert (gen.min_length or 0) == 0 and gen.repetition_penalty in (None, 1.0)
    assert gen.forced_bos_token_id is None and gen.forced_eos_token_id is None
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            num_beams=1,
            # Recomputes every step: plain greedy argmax. (transformers 5.23's cached path also
            # breaks when num_decoder_layers != num_layers: its cache is sized by num_layers.)
            use_cache=False,
            **kw,
        ).numpy()
    # Drop the start token; transformers stops once every row is done, we always emit
    # max_new_tokens (pad after EOS).
    out = out[:, 1:]
    return np.pad(out, ((0, 0), (0, NEW_TOKENS - out.shape[1])), constant_values=pad_id)


def test_greedy_generation_matches_transformers(t5):
    _, hf, _, model = t5
    ids, mask, _ = _inputs()
    want = _hf_greedy(hf, ids, mask, model.config.pad_token_id)
    got = model.generate(jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=NEW_TOKENS)
    chex.assert_shape(got, (3, NEW_TOKENS))
    assert got.dtype == jnp.int32
    assert len(np.unique(want)) > 5, "the random model should not be degenerate"
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.slow  # heavy; the default run keeps the suite under 12 minutes on 2 cores
def test_greedy_eos_then_pad_through_split_jit_merge(t5_v1_1):
    _, hf, path, model = t5_v1_1
    ids, mask, _ = _inputs()
    eos = int(_hf_greedy(hf, ids, mask, model.config.pad_token_id)[0, 4])
    # Row 0 now ends at step 4 or earlier; the other rows may end too.
    model = from_pretrained(path, eos_token_id=eos)
    graphdef, state = nnx.split(model)
    fn = jax.jit(t5_greedy, static_argnums=0, static_argnames="max_new_tokens")
    got = fn(graphdef, state, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=NEW_TOKENS)
    want = _hf_greedy(hf, ids, mask, model.config.pad_token_id, eos_token_id=eos)
    np.testing.assert_array_equal(np.asarray(got), want)
    stop = int(np.argmax(want[0] == eos))
    assert stop <= 4 and (want[0, stop + 1 :] == model.config.pad_token_id).all()


def test_save_pretrained_round_trips_bit_exactly(t5, tmp_path):
    variant, hf, _, model = t5
    path = save_pretrained(model, tmp_path / "ours")
    written = json.loads((path / "config.json").read_text())
    assert written["architectures"] == ["T5ForConditionalGeneration"]
    back = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
    assert back.config.scale_decoder_outputs == hf.config.scale_decoder_outputs
    assert back.config.feed_forward_proj == hf.config.feed_forward_proj
    assert back.config.num_decoder_layers == hf.config.num_decoder_layers
    assert back.config.decoder_start_token_id == 0
    want, got = hf.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), name


def test_missing_tensor_is_named(t5_v1_0, tmp_path):
    _, _, path, _ = t5_v1_0
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    gone = "decoder.block.1.layer.2.DenseReluDense.wo.weight"
    del tensors[gone]
    tensors["encoder.block.0.layer.0.SelfAttention.extra"] = np.zeros(3, np.float32)
    broken = tmp_path / "broken"
    broken.mkdir()
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    (broken / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointMismatchError) as err:
        from_pretrained(broken)
    assert gone in str(err.value) and "SelfAttention.extra" in str(err.value)
    assert err.value.missing == [gone]


def test_encoder_model_loads_and_exports(t5_v1_1, tmp_path):
    _, hf, path, model = t5_v1_1
    encoder = from_pretrained(path, head="encoder")
    assert isinstance(encoder, T5EncoderModel)
    ids, mask, _ = _inputs()
    want = model.encode(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state
    got = encoder(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state
    np.testing.assert_array_equal(got, want)
    back = transformers.T5EncoderModel.from_pretrained(save_pretrained(encoder, tmp_path / "enc"))
    ref = hf.state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, ref[name]), name


def test_run_layers_ranges_and_token_subsets(t5_v1_0):
    _, _, _, model = t5_v1_0
    ids, mask, _ = _inputs()
    h = model.embed(jnp.asarray(ids))
    enc = model.encoder
    full = enc.run_layers(h, jnp.asarray(mask), output_hidden_states=True)
    part = enc.run_layers(h, jnp.asarray(mask), 0, 1)
    rest = enc.run_layers(part.last_hidden_state, jnp.asarray(mask), 1, 2)
    np.testing.assert_array_equal(rest.last_hidden_state, full.last_hidden_state)
    np.testing.assert_array_equal(part.last_hidden_state, full.hidden_states[1])
    # finish() after the layers is what encode() returns.
    np.testing.assert_allclose(
        enc.finish(full.last_hidden_state),
        model.encode(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state,
        atol=1e-6,
    )

    # A gathered subset of tokens with its original positions sees exactly what it saw in the
    # full sequence with the other tokens masked out.
    keep = np.stack(
        [np.sort(np.random.RandomState(i).choice(14, 6, replace=False)) for i in (1, 2)]
    )
    keep_mask = np.zeros((2, 14), np.int32)
    np.put_along_axis(keep_mask, keep, 1, axis=1)
    masked = enc.run_layers(h[:2], jnp.asarray(keep_mask)).last_hidden_state
    subset = enc.run_layers(
        jnp.take_along_axis(h[:2], jnp.asarray(keep)[..., None], axis=1),
        None,
        positions=jnp.asarray(keep),
    ).last_hidden_state
    chex.assert_shape(subset, (2, 6, model.config.d_model))
    want = np.take_along_axis(np.asarray(masked), keep[..., None], axis=1)
    assert _max_diff(subset, want) < 1e-5
    with pytest.raises(ValueError, match="outside"):
        enc.run_layers(h, None, 1, 3)


def test_dropout_only_with_rngs(t5_v1_0):
    _, _, _, model = t5_v1_0
    ids, mask, _ = _inputs(b=2, s=6)
    args = (jnp.asarray(ids), jnp.asarray(mask))
    a = model.encode(*args).last_hidden_state
    np.testing.assert_array_equal(model.encode(*args).last_hidden_state, a)
    dropped = model.encode(*args, rngs=nnx.Rngs(dropout=0)).last_hidden_state
    assert _max_diff(dropped, a) > 1e-3


def test_bad_inputs_give_clear_errors(t5_v1_0):
    _, _, _, model = t5_v1_0
    ids, mask, dec = _inputs(b=2, s=6, t=4)
    bad = ids.copy()
    bad[0, 2] = 99
    with pytest.raises(ValueError, match=r"input_ids holds token ids outside .*\[99\]"):
        model(jnp.asarray(bad), jnp.asarray(mask), jnp.asarray(dec))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(jnp.asarray(ids), jnp.asarray(mask[:, :-1]), jnp.asarray(dec))
    with pytest.raises(ValueError, match="decoder_input_ids holds token ids outside"):
        model(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec) - 1)
    with pytest.raises(TypeError, match="integers"):
        model.generate(jnp.asarray(ids, jnp.float32), jnp.asarray(mask))
    with pytest.raises(ValueError, match="decoder_input_ids is required"):
        model(jnp.asarray(ids), jnp.asarray(mask))
    enc = model.encode(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state
    with pytest.raises(ValueError, match="encoder_mask must have shape"):
        model.decode(jnp.asarray(dec), enc, jnp.asarray(mask[:, :3]))
    with pytest.raises(ValueError, match="overflows"):
        model.decode(jnp.asarray(dec), enc, jnp.asarray(mask), model.init_cache(2, 5), 2)
    with pytest.raises(ValueError, match="needs cache_index"):
        model.decode(jnp.asarray(dec), enc, jnp.asarray(mask), model.init_cache(2, 5))


def test_config_validation():
    with pytest.raises(ValueError, match="feed_forward_proj"):
        T5Config.tiny(feed_forward_proj="gelu-relu")
    with pytest.raises(ValueError, match="unknown|not a valid"):
        T5Config.tiny(feed_forward_proj="gated-swish")
    with pytest.raises(ValueError, match="num_heads"):
        T5Config.tiny(num_heads=0)
    with pytest.raises(ValueError, match="relative_attention_max_distance"):
        T5Config.tiny(relative_attention_max_distance=4)
    with pytest.raises(ValueError, match="eos_token_id"):
        T5Config.tiny(eos_token_id=99)
    assert T5Config.tiny(num_decoder_layers=None).num_decoder_layers == 2
    assert T5Config.flan_t5_small().activation == "gelu_new"


@pytest.mark.parametrize(
    "preset, params", [(T5Config.t5_small, 60_506_624), (T5Config.flan_t5_small, 76_961_152)]
)
def test_full_size_presets_by_shape(preset, params):
    """Parameter counts of google-t5/t5-small and google/flan-t5-small, without allocating."""
    abstract = nnx.eval_shape(lambda: T5ForConditionalGeneration(preset(), rngs=nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == params
