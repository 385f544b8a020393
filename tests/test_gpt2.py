"""GPT-2: parity with transformers' PyTorch GPT2LMHeadModel, KV cache, generation, layer
ranges, token subsets, checkpoint round trips and input errors."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elang_jax.hf import CheckpointMismatchError, from_pretrained, save_pretrained
from elang_jax.models._gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model, greedy_decode
from elang_jax.testing import tolerances

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

F32_ATOL, _ = tolerances(jnp.float32)  # max abs, float32 parity with PyTorch
VOCAB, N_POS, N_LAYER, EOS = 101, 48, 3, 100


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=N_POS,
        n_embd=32,
        n_layer=N_LAYER,
        n_head=4,
        n_inner=48,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=EOS,
        eos_token_id=EOS,
        # Larger than GPT-2's 0.02 so that a random model's greedy output varies.
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    # Eager attention returns attention probabilities (SDPA does not).
    model = transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation="eager").eval()
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(str(path))
    return path, model


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    return hf_dir[1]


@pytest.fixture(scope="module")
def model(hf_dir):
    return from_pretrained(hf_dir[0])


@functools.partial(jax.jit, static_argnames=("graphdef", "method", "static"))
def _jitted(graphdef, state, args, kwargs, *, method, static):
    fn = nnx.merge(graphdef, state)
    for name in method.split("."):
        fn = getattr(fn, name)
    return fn(*args, **kwargs, **dict(static))


def jit_call(model, method, *args, **kwargs):
    """`model.<method>(*args, **kwargs)` under `jit`, Python bools and ints static.

    On CPU one compiled forward per shape costs far less than eager op-by-op dispatch, which
    compiles every primitive separately. Checks on values (ids, cache_index) run eagerly
    only, so the error tests call the model directly.
    """
    static = tuple(sorted((k, v) for k, v in kwargs.items() if isinstance(v, bool | int)))
    dynamic = {k: v for k, v in kwargs.items() if not isinstance(v, bool | int)}
    graphdef, state = nnx.split(model)
    return _jitted(graphdef, state, args, dynamic, method=method, static=static)


def _batch(seed=0, b=3, t=9, pads=(0, 3, 5)):
    """Random ids with left padding of `pads[i]` tokens in row i, and the matching mask."""
    ids = np.random.RandomState(seed).randint(0, VOCAB - 1, (b, t))
    mask = np.ones((b, t), np.int32)
    for row, p in enumerate(pads):
        mask[row, :p] = 0
        ids[row, :p] = EOS  # pad = eos, as HF does for GPT-2
    return ids, mask


def _hf_positions(mask):
    return np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0)


def _torch(x):
    return torch.tensor(np.asarray(x), dtype=torch.long)


def test_loads_as_causal_lm(model):
    assert isinstance(model, GPT2LMHeadModel)
    assert model.config.n_inner == 48 and model.config.eos_token_id == EOS


def test_logits_match_hf_unpadded(model, hf_model):
    ids, _ = _batch(pads=(0, 0, 0))
    with torch.no_grad():
        ref = hf_model(_torch(ids)).logits.numpy()
    ours = np.asarray(jit_call(model, "__call__", jnp.asarray(ids)).logits)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() < F32_ATOL


@pytest.mark.parametrize("pass_positions", [False, True])
def test_logits_match_hf_left_padded(model, hf_model, pass_positions):
    ids, mask = _batch()
    pos = _hf_positions(mask) if pass_positions else None
    with torch.no_grad():
        ref = hf_model(
            _torch(ids),
            attention_mask=_torch(mask),
            position_ids=None if pos is None else _torch(pos),
        ).logits.numpy()
    pos = None if pos is None else jnp.asarray(pos)
    ours = np.asarray(jit_call(model, "__call__", jnp.asarray(ids), jnp.asarray(mask), pos).logits)
    real = mask.astype(bool)  # padding rows attend to nothing: their outputs are arbitrary
    assert np.abs(ours - ref)[real].max() < F32_ATOL


def test_hidden_states_and_attentions_match_hf(model, hf_model):
    ids, mask = _batch(pads=(0, 2, 0))
    with torch.no_grad():
        ref = hf_model(
            _torch(ids),
            attention_mask=_torch(mask),
            output_hidden_states=True,
            output_attentions=True,
        )
    out = jit_call(
        model,
        "__call__",
        jnp.asarray(ids),
        jnp.asarray(mask),
        output_hidden_states=True,
        output_attentions=True,
    )
    b, t = ids.shape
    assert len(out.hidden_states) == N_LAYER + 1
    assert len(out.attentions) == N_LAYER
    real = mask.astype(bool)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert ours.shape == (b, t, 32)
        assert np.abs(np.asarray(ours) - theirs.numpy())[real].max() < F32_ATOL
    for ours, theirs in zip(out.attentions, ref.attentions, strict=True):
        assert ours.shape == (b, 4, t, t)
        diff = np.abs(np.asarray(ours) - theirs.numpy()).transpose(0, 2, 1, 3)  # [b t h s]
        assert diff[real].max() < F32_ATOL


def _hf_generate(hf_model, ids, mask, n, eos):
    with torch.no_grad():
        out = hf_model.generate(
            _torch(ids),
            attention_mask=_torch(mask),
            max_new_tokens=n,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    new = out[:, ids.shape[1] :].numpy()
    # HF stops once every row has finished; we always return n columns of pad after EOS.
    return np.pad(new, ((0, 0), (0, n - new.shape[1])), constant_values=eos)


def test_generate_matches_hf_greedy(model, hf_model):
    ids, mask = _batch(seed=1)
    n = 20
    # Choose as EOS a token that row 0 emits mid-way, so that stopping and padding are tested.
    free = _hf_generate(hf_model, ids, mask, n, eos=EOS)
    ours_free = np.asarray(model.generate(jnp.asarray(ids), jnp.asarray(mask), n))
    np.testing.assert_array_equal(ours_free, free)
    eos = int(free[0, 6])
    ref = _hf_generate(hf_model, ids, mask, n, eos=eos)
    ours = np.asarray(
        model.generate(jnp.asarray(ids), jnp.asarray(mask), n, eos_token_id=eos, pad_token_id=eos)
    )
    assert ours.shape == (3, n) and ours.dtype == np.int32
    np.testing.assert_array_equal(ours, ref)
    assert (ours[0, 7:] == eos).all()


def test_generate_under_user_jit_split_merge(model):
    ids, mask = _batch(seed=2)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    eager = np.asarray(model.generate(ids, mask, 8))
    graphdef, state = nnx.split(model)

    @jax.jit
    def both(state, ids, mask):
        m = nnx.merge(graphdef, state)
        pure = greedy_decode(m, ids, mask, 8, eos_token_id=EOS, pad_token_id=EOS)
        return m.generate(ids, mask, 8), pure

    via_method, via_function = both(state, ids, mask)
    np.testing.assert_array_equal(via_method, eager)
    np.testing.assert_array_equal(via_function, eager)


def test_kv_cached_logits_equal_full_sequence(model):
    ids, mask = _batch(seed=3, t=11, pads=(0, 4, 2))
    pos = _hf_positions(mask)
    full = jit_call(model, "__call__", jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pos))
    full = np.asarray(full.logits)
    b, t = ids.shape
    c = t + 3  # spare slots stay hidden: they are causally in the future
    cache_mask = jnp.asarray(np.pad(mask, ((0, 0), (0, c - t)), constant_values=1))
    cache = model.init_cache(b, c)
    pieces, start = [], 0
    for stop in (6, 7, 9, 10, 11):  # a prefill, single tokens and a two-token chunk
        out = jit_call(
            model,
            "__call__",
            jnp.asarray(ids[:, start:stop]),
            cache_mask,
            jnp.asarray(pos[:, start:stop]),
            cache=cache,
            cache_index=jnp.int32(start),  # traced: one compile per chunk length
        )
        cache, start = out.cache, stop
        pieces.append(np.asarray(out.logits))
    cached = np.concatenate(pieces, axis=1)
    assert np.abs(cached - full)[mask.astype(bool)].max() < F32_ATOL


def test_cached_attentions_cover_the_cache(model):
    cache = model.init_cache(2, 10)
    ids = jnp.zeros((2, 4), jnp.int32)
    out = jit_call(model, "__call__", ids, cache=cache, cache_index=0, output_attentions=True)
    assert out.attentions[0].shape == (2, 4, 4, 10)
    assert len(out.cache) == N_LAYER and out.cache[0].key.shape == (2, 10, 4, 8)
    assert np.all(np.asarray(cache[0].key) == 0)  # the input cache is not modified


def test_run_layers_pieces_compose(model):
    ids, mask = _batch(seed=4)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    h = jit_call(model, "transformer.embed", ids)
    full = jit_call(model, "transformer.run_layers", h, mask, output_hidden_states=True)
    h1 = jit_call(model, "transformer.run_layers", h, mask, start=0, stop=1).last_hidden_state
    h3 = jit_call(model, "transformer.run_layers", h1, mask, start=1, stop=3).last_hidden_state
    np.testing.assert_allclose(h3, full.last_hidden_state, atol=1e-6)
    np.testing.assert_allclose(h1, full.hidden_states[1], atol=1e-6)
    assert model.transformer.run_layers(h, None, 2, 2).last_hidden_state is h
    # The raw stack output through the shared final norm and tied head gives the logits.
    logits = jit_call(model, "logits", full.last_hidden_state)
    np.testing.assert_allclose(logits, jit_call(model, "__call__", ids, mask).logits, atol=1e-5)


def test_subset_of_tokens_with_positions(model):
    ids, _ = _batch(seed=5, t=10, pads=(0, 0, 0))
    pos = np.broadcast_to(np.arange(10), ids.shape)

    def run(keep, with_positions=True):
        sub_ids, sub_pos = jnp.asarray(ids[:, keep]), jnp.asarray(pos[:, keep])
        h = jit_call(model, "transformer.embed", sub_ids, sub_pos)
        positions = sub_pos if with_positions else None
        out = jit_call(model, "transformer.run_layers", h, None, positions=positions)
        return np.asarray(out.last_hidden_state)

    full = run(np.arange(10), with_positions=False)
    # A prefix: the same as running the shorter sequence.
    np.testing.assert_allclose(run(np.arange(6)), full[:, :6], atol=1e-5)
    # The whole sequence gathered in a shuffled order with its positions: causality follows
    # positions, so every token gets its original output.
    perm = np.random.RandomState(0).permutation(10)
    np.testing.assert_allclose(run(perm), full[:, perm], atol=1e-5)
    # A strided subset: with sorted positions, position causality equals index causality.
    keep = np.array([0, 2, 3, 7, 9])
    np.testing.assert_allclose(run(keep), run(keep, with_positions=False), atol=1e-6)


def test_save_pretrained_round_trips_bit_exactly(model, hf_model, hf_dir, tmp_path):
    from safetensors.numpy import load_file

    save_pretrained(model, tmp_path)
    theirs = load_file(str(hf_dir[0] / "model.safetensors"))
    ours = load_file(str(tmp_path / "model.safetensors"))
    assert sorted(ours) == sorted(theirs)  # transformers 5 writes no lm_head.weight either
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path))
    ref = hf_model.state_dict()
    got = reloaded.state_dict()
    assert sorted(got) == sorted(ref)
    for name, tensor in ref.items():
        assert torch.equal(got[name], tensor), name
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == ["GPT2LMHeadModel"] and written["n_inner"] == 48


def test_base_and_lm_checkpoints_load_either_way(model, hf_model, tmp_path):
    lm_dir = tmp_path / "lm"
    save_pretrained(model, lm_dir)
    backbone = from_pretrained(lm_dir, head="base")
    assert isinstance(backbone, GPT2Model)
    base_dir = tmp_path / "base"
    save_pretrained(backbone, base_dir)
    hf_base = transformers.GPT2Model.from_pretrained(str(base_dir))
    for name, tensor in hf_model.transformer.state_dict().items():
        assert torch.equal(hf_base.state_dict()[name], tensor), name
    lm = from_pretrained(base_dir, head="causal_lm")
    ids, mask = _batch(seed=6)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    np.testing.assert_array_equal(
        jit_call(lm, "__call__", ids, mask).logits, jit_call(model, "__call__", ids, mask).logits
    )


def test_missing_tensor_is_reported(hf_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(hf_dir[0] / "model.safetensors"))
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((hf_dir[0] / "config.json").read_text())
    with pytest.raises(CheckpointMismatchError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight"):
        from_pretrained(tmp_path)


def test_old_checkpoint_with_tied_head_and_mask_buffers_loads(model, hf_dir, tmp_path):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(hf_dir[0] / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
    for i in range(N_LAYER):
        tensors[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((1, 1, N_POS, N_POS), np.uint8))
        tensors[f"transformer.h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((hf_dir[0] / "config.json").read_text())
    loaded = from_pretrained(tmp_path)
    for ours, theirs in zip(
        jax.tree.leaves(nnx.state(loaded)), jax.tree.leaves(nnx.state(model)), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)


def test_bad_inputs_give_clear_errors(model):
    ids, mask = _batch()
    bad = ids.copy()
    bad[0, 0] = VOCAB
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(jnp.asarray(bad))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate(jnp.asarray(bad), jnp.asarray(mask), 4)
    with pytest.raises(ValueError, match="exceeds the model's maximum of 48"):
        model(jnp.zeros((1, N_POS + 1), jnp.int32))
    with pytest.raises(ValueError, match="prompt \\+ max_new_tokens length 49"):
        model.generate(jnp.asarray(ids), jnp.asarray(mask), N_POS - ids.shape[1] + 1)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(jnp.asarray(ids), jnp.asarray(mask[:, 1:]))
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model.generate(jnp.asarray(ids), jnp.asarray(mask[:2]), 4)
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(jnp.asarray(ids), jnp.asarray(mask[:, ::-1]), 4)
    with pytest.raises(TypeError, match="must hold integers"):
        model(jnp.asarray(ids, jnp.float32))
    cache = model.init_cache(3, 10)
    with pytest.raises(ValueError, match="overflows the cache"):
        model(jnp.asarray(ids), cache=cache, cache_index=2)
    with pytest.raises(ValueError, match="needs cache_index"):
        model(jnp.asarray(ids), cache=cache)
    with pytest.raises(ValueError, match="one entry per cache slot"):
        model(jnp.asarray(ids), jnp.asarray(mask), cache=cache, cache_index=0)
    with pytest.raises(ValueError, match="cache length 49 exceeds"):
        model.init_cache(1, N_POS + 1)
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 48\)"):
        model(jnp.asarray(ids), None, jnp.full(ids.shape, N_POS, jnp.int32))
    with pytest.raises(ValueError, match="layer range"):
        model.transformer.run_layers(jnp.zeros((1, 2, 32)), None, 2, 5)


def test_config_validation_and_presets():
    with pytest.raises(ValueError, match="not divisible"):
        GPT2Config.tiny(n_embd=30)
    with pytest.raises(ValueError, match="resid_dropout"):
        GPT2Config.tiny(resid_dropout=1.0)
    tiny = GPT2Config.tiny(vocab_size=50)
    assert tiny.eos_token_id == 49 and tiny.d_ff == 128 and tiny.generation_pad_id == 49
    small = GPT2Config.gpt2_small()
    abstract = nnx.eval_shape(lambda: GPT2LMHeadModel(small, rngs=nnx.Rngs(0)))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert n == 124_439_808  # the `gpt2` checkpoint's parameter count (lm_head tied)


def test_tiny_model_runs_with_dropout_and_bfloat16():
    model = GPT2LMHeadModel(GPT2Config.tiny(dtype=jnp.bfloat16), rngs=nnx.Rngs(0))
    ids = jnp.ones((2, 5), jnp.int32)

    @nnx.jit
    def train_and_eval(model, rngs):
        return model(ids, rngs=rngs).logits, model(ids).logits

    train, evals = train_and_eval(model, nnx.Rngs(dropout=1))
    assert train.dtype == evals.dtype == jnp.float32
    assert not np.allclose(train, evals)
