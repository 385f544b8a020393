"""BERT-family backbones: parity with transformers' PyTorch models, checkpoint I/O, errors."""

from __future__ import annotations

import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from elang_jax import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    CheckpointMismatchError,
    from_pretrained,
    save_pretrained,
)
from elang_jax.testing import assert_close  # noqa: E402

SMALL = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
)


def _hf_model(kind: str, head: str):
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(**SMALL, max_position_embeddings=64, num_labels=3)
        prefix = "Bert"
    else:
        cfg = transformers.RobertaConfig(
            **SMALL, max_position_embeddings=66, num_labels=3, pad_token_id=1
        )
        prefix = "Roberta"
    cfg._attn_implementation = "eager"  # sdpa cannot return attention probabilities
    cls = getattr(transformers, prefix + head)
    return cls(cfg).eval()


def _inputs(rng, pad_id: int, b: int = 3, t: int = 12):
    ids = rng.randint(3, 99, size=(b, t))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # a padded row
    ids[mask == 0] = pad_id
    return ids.astype(np.int32), mask.astype(np.int32)


def _saved(tmp_path, hf_model):
    path = tmp_path / "hf"
    hf_model.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_sequence_classification_parity_and_round_trip(kind, tmp_path, rng):
    hf = _hf_model(kind, "ForSequenceClassification")
    model = from_pretrained(_saved(tmp_path, hf))
    assert isinstance(model, BertForSequenceClassification)
    ids, mask = _inputs(rng, hf.config.pad_token_id)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    out = model(jnp.asarray(ids), jnp.asarray(mask))
    chex.assert_shape(out.logits, (3, 3))
    assert_close(out.logits, ref)

    # save_pretrained -> transformers.from_pretrained is bit-exact.
    path = save_pretrained(model, tmp_path / "ours")
    back = type(hf).from_pretrained(path).eval()
    want, got = hf.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_masked_lm_parity(kind, tmp_path, rng):
    hf = _hf_model(kind, "ForMaskedLM")
    model = from_pretrained(_saved(tmp_path, hf))
    ids, mask = _inputs(rng, hf.config.pad_token_id)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    out = model(jnp.asarray(ids), jnp.asarray(mask))
    valid = mask.astype(bool)
    assert_close(np.asarray(out.logits)[valid], ref[valid])


def test_base_model_hidden_states_and_attentions(tmp_path, rng):
    hf = _hf_model("bert", "Model")
    model = from_pretrained(_saved(tmp_path, hf))
    ids, mask = _inputs(rng, 0)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
            output_attentions=True,
        )
    out = model(
        jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True, output_attentions=True
    )
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    chex.assert_shape(out.attentions, (3, 4, 12, 12))
    for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert_close(ours, theirs.numpy())
    for ours, theirs in zip(out.attentions, ref.attentions, strict=True):
        assert_close(ours, theirs.numpy())
    assert_close(out.pooled, ref.pooler_output.numpy())


def test_run_layers_ranges_and_token_subsets(rng):
    model = BertForSequenceClassification(BertConfig.tiny(num_layers=3), rngs=nnx.Rngs(0)).encoder
    ids, _ = _inputs(rng, 0, b=2, t=10)
    mask = np.ones_like(ids)
    h = model.embed(jnp.asarray(ids))
    full = model.run_layers(h, jnp.asarray(mask)).last_hidden_state
    first = model.run_layers(h, jnp.asarray(mask), 0, 1).last_hidden_state
    rest = model.run_layers(first, jnp.asarray(mask), 1, 3).last_hidden_state
    assert_close(rest, full)

    # Dropping tokens 3..5 from the sequence equals masking them out: the backbone can run on
    # any subset of tokens because positions are added at the embedding.
    keep = np.array([0, 1, 2, 6, 7, 8, 9])
    masked = mask.copy()
    masked[:, 3:6] = 0
    ref = model.run_layers(h, jnp.asarray(masked)).last_hidden_state[:, keep]
    sub = model.run_layers(h[:, keep], jnp.asarray(mask[:, keep])).last_hidden_state
    assert_close(sub, ref)


def test_jit_via_split_merge_matches_eager(rng):
    model = BertForSequenceClassification(BertConfig.tiny(), rngs=nnx.Rngs(0))
    ids, mask = _inputs(rng, 0)
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask).logits

    assert_close(forward(state, ids, mask), model(jnp.asarray(ids), jnp.asarray(mask)).logits)


def test_bare_encoder_checkpoint_gets_a_new_head(tmp_path, rng, caplog):
    hf = _hf_model("bert", "Model")
    with caplog.at_level(logging.WARNING):
        model = from_pretrained(_saved(tmp_path, hf), head="sequence_classification", num_labels=5)
    assert "classifier.weight" in caplog.text
    chex.assert_shape(model.head.out.kernel[...], (32, 5))
    ids, mask = _inputs(rng, 0)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    out = model(jnp.asarray(ids), jnp.asarray(mask))
    assert_close(out.encoder.last_hidden_state, ref.last_hidden_state.numpy())


def test_pytorch_bin_checkpoint(tmp_path, rng):
    hf = _hf_model("bert", "ForSequenceClassification")
    path = tmp_path / "bin"
    hf.save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), path / "pytorch_model.bin")
    model = from_pretrained(path)
    ids, mask = _inputs(rng, 0)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert_close(model(jnp.asarray(ids), jnp.asarray(mask)).logits, ref)


# ------------------------------- bad input ---------------------------------------------------


@pytest.fixture
def tiny_model():
    return BertForSequenceClassification(BertConfig.tiny(), rngs=nnx.Rngs(0))


def test_token_id_outside_vocabulary(tiny_model):
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 99\).*\[120\]"):
        tiny_model(jnp.array([[1, 2, 120]], jnp.int32))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tiny_model(jnp.array([[-1, 2]], jnp.int32))


def test_float_ids_rejected(tiny_model):
    with pytest.raises(TypeError, match="must hold integers"):
        tiny_model(jnp.ones((1, 3), jnp.float32))


def test_sequence_longer_than_position_table(tiny_model):
    with pytest.raises(ValueError, match="length 65 exceeds the model's maximum of 64"):
        tiny_model(jnp.ones((1, 65), jnp.int32))


def test_mask_of_wrong_shape(tiny_model):
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 5\), got \(2, 4\)"):
        tiny_model(jnp.ones((2, 5), jnp.int32), jnp.ones((2, 4), jnp.int32))


def test_checkpoint_with_missing_and_mis_shaped_tensors(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = _saved(tmp_path, _hf_model("bert", "ForSequenceClassification"))
    tensors = load_file(path / "model.safetensors")
    del tensors["bert.encoder.layer.1.output.dense.weight"]
    tensors["bert.pooler.dense.bias"] = np.zeros((7,), np.float32)
    tensors["bert.extra.weight"] = np.zeros((2,), np.float32)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError) as err:
        from_pretrained(path)
    msg = str(err.value)
    assert "missing tensors (1): bert.encoder.layer.1.output.dense.weight" in msg
    assert "unexpected tensors (1): bert.extra.weight" in msg
    assert "bert.pooler.dense.bias (got (7,), model wants (32,))" in msg


def test_missing_directory_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_pretrained(tmp_path / "nope" / "deeper" / "dir")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="lacks the field 'vocab_size'"):
        from_pretrained(tmp_path / "empty", head="base")
    _hf_model("bert", "Model").config.save_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        from_pretrained(tmp_path / "empty", head="base")


def test_config_validation():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        BertConfig.tiny(hidden_size=30)
    with pytest.raises(ValueError, match="unknown|is not a valid Activation"):
        BertConfig.tiny(hidden_act="swishy")


# ------------------------------- real checkpoint ---------------------------------------------


def test_real_minilm_matches_transformers(minilm_dir):
    from elang_jax.data import read_glue

    sentences = read_glue("sst2", "dev").text_a[:16]
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    enc = tok(sentences, padding=True, return_tensors="np")
    ours = from_pretrained(minilm_dir)
    theirs = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        ref = theirs(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    out = ours(
        jnp.asarray(enc["input_ids"], jnp.int32),
        jnp.asarray(enc["attention_mask"], jnp.int32),
        jnp.asarray(enc["token_type_ids"], jnp.int32),
    )
    valid = enc["attention_mask"].astype(bool)
    assert_close(np.asarray(out.last_hidden_state)[valid], ref[valid])


def test_first_layers_of_a_checkpoint(tmp_path, rng):
    hf = _hf_model("bert", "Model")
    path = _saved(tmp_path, hf)
    model = from_pretrained(path, head="sequence_classification", num_layers=1)
    assert len(model.encoder.layers) == 1
    ids, mask = _inputs(rng, 0)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            output_hidden_states=True,
        ).hidden_states[1]
    out = model(jnp.asarray(ids), jnp.asarray(mask)).encoder.last_hidden_state
    assert_close(out, ref.numpy())
    # Without the override, a checkpoint with more layers than the config is an error.
    with pytest.raises(CheckpointMismatchError, match="encoder.layer.1"):
        from elang_jax.hf._bert_map import rules
        from elang_jax.hf._io import read_tensors
        from elang_jax.hf._rules import load_into

        rs = rules(model.config, "sequence_classification", "base")
        load_into(model, read_tensors(path), rs.rules, aliases=rs.aliases, ignore=rs.ignore)


def test_hub_names_resolve_through_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    local = _saved(tmp_path, _hf_model("bert", "ForSequenceClassification"))
    calls = []

    def fake_download(repo_id, **kw):
        calls.append(repo_id)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model = from_pretrained("someone/tiny-bert")
    assert calls == ["someone/tiny-bert"]
    assert isinstance(model, BertForSequenceClassification)


def test_hub_name_offline_gives_a_clear_error(monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="could not be fetched from the Hugging Face hub"):
        from_pretrained("someone/tiny-bert")


@pytest.mark.parametrize(
    ("saved", "head", "new"),
    [
        ("Model", "masked_lm", "cls.predictions.transform.dense.weight"),
        ("ForMaskedLM", "sequence_classification", "bert.pooler.dense.weight"),
        ("ForSequenceClassification", "base", None),
    ],
)
def test_loading_with_another_head(tmp_path, rng, caplog, saved, head, new):
    hf = _hf_model("bert", saved)
    with caplog.at_level(logging.WARNING):
        model = from_pretrained(_saved(tmp_path, hf), head=head)
    if new is not None:
        assert new in caplog.text
    ids, mask = _inputs(rng, 0)
    base = hf.bert if hasattr(hf, "bert") else hf
    with torch.no_grad():
        ref = base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    encoder = model if head == "base" else model.encoder
    out = encoder(jnp.asarray(ids), jnp.asarray(mask))
    assert_close(out.last_hidden_state, ref.last_hidden_state.numpy())
