"""Cascades: degenerate thresholds, batch invariance, both execution paths, bad input."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from elang_jax import BertConfig, BertForSequenceClassification
from elang_jax.cascade import Cascade, Tier, TierConfig
from elang_jax.data import Encoded, LengthBuckets
from elang_jax.testing import assert_close

B = 8
T = 12
POOL = 64


def _model(layers: int, seed: int, labels: int = 3):
    cfg = BertConfig.tiny(num_layers=layers, num_labels=labels, hidden_dropout=0.0)
    return BertForSequenceClassification(cfg, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def pool():
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 99, size=(POOL, T)).astype(np.int32)
    mask = np.ones_like(ids)
    lengths = rng.randint(3, T + 1, size=POOL)
    for i, n in enumerate(lengths):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def cascade(pool):
    swift, sup = _model(1, 1), _model(2, 2)
    ids, mask = pool
    s = np.asarray(jnp.max(jnp.asarray(swift(jnp.asarray(ids), jnp.asarray(mask)).logits), axis=-1))
    del s
    tiers = [
        Tier(swift, TierConfig(name="swift", score="max_prob", threshold=0.5)),
        Tier(sup, TierConfig(name="super", score="max_prob")),
    ]
    c = Cascade(tiers)
    # Threshold at the median swift score, away from every example's score, so that float
    # differences between batch shapes cannot flip a decision.
    alone = c.serving_step(1)
    scores = np.array(
        [float(alone(_inputs(ids[i : i + 1], mask[i : i + 1])).scores[0, 0]) for i in range(POOL)]
    )
    srt = np.sort(scores)
    gaps = np.diff(srt)
    mid = POOL // 4 + int(np.argmax(gaps[POOL // 4 : 3 * POOL // 4]))
    th = float((srt[mid] + srt[mid + 1]) / 2)
    return c.with_thresholds([th]), scores >= th


def _inputs(ids, mask):
    return dict(
        input_ids=jnp.asarray(ids),
        attention_mask=jnp.asarray(mask),
        token_type_ids=jnp.zeros_like(jnp.asarray(ids)),
    )


def test_all_to_super_and_none_to_super(cascade, pool):
    c, _ = cascade
    ids, mask = pool
    step = c.serving_step(B)
    x = _inputs(ids[:B], mask[:B])
    sup = c.tiers[1].model(x["input_ids"], x["attention_mask"]).logits
    swift = c.tiers[0].model(x["input_ids"], x["attention_mask"]).logits
    out = step(x, thresholds=[math.inf])
    np.testing.assert_array_equal(out.tier, np.ones(B))
    assert_close(out.logits, sup)
    np.testing.assert_array_equal(out.predictions, np.argmax(sup, -1))
    out = step(x, thresholds=[-math.inf])
    np.testing.assert_array_equal(out.tier, np.zeros(B))
    assert_close(out.logits, swift)
    assert np.isnan(np.asarray(out.scores[:, 1])).all()


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_batch_invariance_every_bucket(cascade, pool, data):
    c, easy = cascade
    ids, mask = pool
    hard_pool, easy_pool = np.flatnonzero(~easy), np.flatnonzero(easy)
    # Choose how many examples escalate, so every bucket (0, 1, 2, 4, 8) is hit.
    n_hard = data.draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8]))
    rows = np.concatenate(
        [
            data.draw(st.lists(st.sampled_from(list(hard_pool)), min_size=n_hard, max_size=n_hard)),
            data.draw(
                st.lists(st.sampled_from(list(easy_pool)), min_size=B - n_hard, max_size=B - n_hard)
            ),
        ]
    ).astype(int)
    rows = np.asarray(data.draw(st.permutations(list(rows))))
    step, alone = c.serving_step(B), c.serving_step(1)
    out = step(_inputs(ids[rows], mask[rows]))
    assert int(np.sum(np.asarray(out.tier) == 1)) == n_hard
    for j, r in enumerate(rows):
        one = alone(_inputs(ids[r : r + 1], mask[r : r + 1]))
        assert int(one.tier[0]) == int(out.tier[j])
        assert int(one.predictions[0]) == int(out.predictions[j])


def test_padding_rows_never_escalate(cascade, pool):
    c, easy = cascade
    ids, mask = pool
    rows = np.flatnonzero(~easy)[:B]
    valid = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    out = c.serving_step(B)(_inputs(ids[rows], mask[rows]), valid=valid)
    np.testing.assert_array_equal(np.asarray(out.tier), valid.astype(int))


def test_offline_path_matches_serving_step(cascade, pool):
    c, _ = cascade
    ids, mask = pool
    lengths = mask.sum(1).astype(np.int32)
    enc = Encoded(
        input_ids=[ids[i, : lengths[i]] for i in range(POOL)],
        token_type_ids=[np.zeros(lengths[i], np.int32) for i in range(POOL)],
        lengths=lengths,
        labels=np.zeros(POOL, np.int32),
        max_length=T,
    )
    res = c.predict_dataset(enc, LengthBuckets(lengths=(8, T)))
    step = c.serving_step(B)
    for start in range(0, POOL, B):
        out = step(_inputs(ids[start : start + B], mask[start : start + B]))
        np.testing.assert_array_equal(res["tier"][start : start + B], out.tier)
        np.testing.assert_array_equal(res["predictions"][start : start + B], out.predictions)
    assert res["examples_per_tier"][0] == POOL
    assert res["examples_per_tier"][1] == int(np.sum(res["tier"] == 1))


def test_three_tiers_per_tier_inputs(pool):
    ids, mask = pool
    tiers = [
        Tier(_model(1, 1), TierConfig(name="a", score="entropy", threshold=-0.5)),
        Tier(_model(1, 3), TierConfig(name="b", score="margin", threshold=0.2)),
        Tier(_model(2, 2), TierConfig(name="c")),
    ]
    c = Cascade(tiers)
    x = _inputs(ids[:B], mask[:B])
    out = c.serving_step(B)([x, x, x])
    tier = np.asarray(out.tier)
    scores = np.asarray(out.scores)
    assert set(tier.tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(tier == 0, scores[:, 0] >= -0.5)
    assert np.isnan(scores[tier == 0, 1]).all()
    np.testing.assert_array_equal(np.isnan(scores[:, 2]), tier < 2)


def test_bad_input():
    with pytest.raises(ValueError, match="threshold is NaN"):
        TierConfig(name="x", threshold=float("nan"))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TierConfig(name="x", temperature=-1.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TierConfig(name="x", temperature=float("nan"))
    with pytest.raises(ValueError, match="mismatched label spaces"):
        Cascade(
            [
                Tier(_model(1, 0, 2), TierConfig(name="a")),
                Tier(_model(1, 0, 3), TierConfig(name="b")),
            ]
        )
    with pytest.raises(ValueError, match="at least 2 tiers"):
        Cascade([Tier(_model(1, 0), TierConfig(name="a"))])
    c = Cascade(
        [Tier(_model(1, 0), TierConfig(name="a")), Tier(_model(1, 1), TierConfig(name="b"))]
    )
    with pytest.raises(ValueError, match="non-NaN"):
        c.serving_step(2)(
            _inputs(np.ones((2, 4), np.int32), np.ones((2, 4), np.int32)), thresholds=[float("nan")]
        )
    with pytest.raises(ValueError, match="built for batch 2"):
        c.serving_step(2)(_inputs(np.ones((3, 4), np.int32), np.ones((3, 4), np.int32)))


def test_tiers_with_their_own_tokenizers(minilm_dir):
    """Tiers may tokenize differently: each encodes the same examples with its own
    tokenizer, and the offline path takes one dataset per tier."""
    from elang_jax.data import load_tokenizer, read_glue

    tok = load_tokenizer(minilm_dir)
    examples = read_glue("sst2", "dev")
    examples = type(examples)(text_a=examples.text_a[:12], text_b=None, labels=examples.labels[:12])
    cfg = BertConfig.tiny(vocab_size=tok.vocab_size, max_position_embeddings=128)
    lower = BertForSequenceClassification(cfg, rngs=nnx.Rngs(0))
    upper = BertForSequenceClassification(cfg.replace(num_layers=3), rngs=nnx.Rngs(1))

    class Prefixed:  # a second tokenizer that tokenizes differently (a prefix first)
        vocab_size = tok.vocab_size

        def __len__(self):
            return len(tok)

        def __call__(self, a, b=None, **kw):
            return tok(["review: " + x for x in a], b, **kw)

        def __getattr__(self, name):
            return getattr(tok, name)

    c = Cascade(
        [
            Tier(lower, TierConfig(name="a", score="max_prob", threshold=0.5), tokenizer=tok),
            Tier(upper, TierConfig(name="b"), tokenizer=Prefixed()),
        ]
    )
    per_tier = c.encode(examples, 128)
    assert len(per_tier) == 2 and len(per_tier[0]) == 12
    np.testing.assert_array_equal(per_tier[1].lengths, per_tier[0].lengths + 2)
    res = c.predict_dataset(per_tier, LengthBuckets(lengths=(32, 128)))
    assert set(np.unique(res["tier"])) <= {0, 1}
    with pytest.raises(ValueError, match="tiers without a tokenizer"):
        Cascade([Tier(lower, TierConfig(name="a")), Tier(upper, TierConfig(name="b"))]).encode(
            examples, 128
        )
