"""E-LANG for encoder-decoders: degenerate thresholds, routing by the head before decoding,
batch invariance, head targets and training, calibration, bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from elang_jax.calibration import CalibrationTarget
from elang_jax.cascade import (
    ElangSeq2Seq,
    EnergyHead,
    Seq2SeqCascadeConfig,
    calibrate_seq2seq_threshold,
    make_head_targets,
    normalize_tokens,
    pooled_encoder_features,
    seq2seq_tier_costs,
    train_energy_head,
)
from elang_jax.flops import t5_flops
from elang_jax.models._t5 import T5Config, T5ForConditionalGeneration
from elang_jax.routing import energy_score
from elang_jax.testing import assert_close

B = 8  # serving batch
S = 10  # source length
POOL = 32
NEW = 8  # max_new_tokens


def _models():
    """Swift (1 encoder / 2 decoder layers) and Super (2 / 3), different seeds. v1.1-style
    (untied head): with NNX's default initialisation these tiny models emit varied tokens,
    and an EOS now and then, instead of pad or EOS at step 0."""
    swift = T5ForConditionalGeneration(
        T5Config.tiny_v1_1(num_layers=1, num_decoder_layers=2), rngs=nnx.Rngs(1)
    )
    sup = T5ForConditionalGeneration(
        T5Config.tiny_v1_1(num_layers=2, num_decoder_layers=3), rngs=nnx.Rngs(2)
    )
    return swift, sup


@pytest.fixture(scope="module")
def pool():
    rng = np.random.RandomState(0)
    ids = rng.randint(2, 99, size=(POOL, S)).astype(np.int32)
    mask = np.ones_like(ids)
    for i, n in enumerate(rng.randint(3, S + 1, size=POOL)):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return ids, mask


def _inputs(ids, mask):
    # Key order matters where the values are unpacked as (input_ids, attention_mask).
    return dict(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask))


@pytest.fixture(scope="module")
def setup(pool):
    """(cascade with a middle threshold, keep [POOL] as routed alone, per-example Swift and
    Super `generate` outputs [POOL n])."""
    swift, sup = _models()
    head = EnergyHead(swift.config.d_model, hidden=16, rngs=nnx.Rngs(3))
    c = ElangSeq2Seq(swift, sup, head, Seq2SeqCascadeConfig(max_new_tokens=NEW))
    ids, mask = pool
    # Threshold in the widest gap of the middle half of the scores, so that float
    # differences between batch shapes cannot flip a decision.
    s = np.sort(np.asarray(c.head_scores(ids, mask)))
    lo = POOL // 4
    mid = lo + int(np.argmax(np.diff(s)[lo : 3 * POOL // 4]))
    th = float((s[mid] + s[mid + 1]) / 2)
    c = c.with_threshold(th)
    keep = np.asarray(c.head_scores(ids, mask)) >= th

    # Each model's own greedy output, one example at a time.
    def alone(model):
        rows = [
            model.generate(*_inputs(ids[i : i + 1], mask[i : i + 1]).values(), NEW)
            for i in range(POOL)
        ]
        return np.concatenate([np.asarray(r) for r in rows])

    sw, su = alone(swift), alone(sup)
    assert len(np.unique(sw)) > 10 and len(np.unique(su)) > 10, "degenerate random models"
    assert (sw != su).any(axis=1).sum() > POOL // 2
    return c, keep, sw, su


def test_degenerate_thresholds_equal_each_models_generate(setup, pool):
    c, _, sw, su = setup
    ids, mask = pool
    step = c.serving_step(B)
    for start in (0, B):
        rows = slice(start, start + B)
        x = _inputs(ids[rows], mask[rows])
        out = step(x, threshold=math.inf)
        np.testing.assert_array_equal(out.tier, np.ones(B))
        np.testing.assert_array_equal(out.tokens, su[rows])
        out = step(x, threshold=-math.inf)
        np.testing.assert_array_equal(out.tier, np.zeros(B))
        np.testing.assert_array_equal(out.tokens, sw[rows])
        assert out.tokens.dtype == jnp.int32 and out.tokens.shape == (B, NEW)
    # Thresholds are traced: three thresholds (and the default), one compilation.
    step(x)
    assert step.traces == 1


def test_middle_threshold_routes_on_the_head_alone(setup, pool):
    c, keep, sw, su = setup
    ids, mask = pool
    step = c.serving_step(B)
    head_scores = np.asarray(c.head_scores(ids, mask))
    tiers = []
    for start in range(0, POOL, B):
        rows = slice(start, start + B)
        out = step(_inputs(ids[rows], mask[rows]))
        tier = np.asarray(out.tier)
        assert_close(out.score, head_scores[rows])
        np.testing.assert_array_equal(tier == 0, head_scores[rows] >= c.config.threshold)
        want = np.where((tier == 0)[:, None], sw[rows], su[rows])
        np.testing.assert_array_equal(out.tokens, want)
        tiers.append(tier)
    tiers = np.concatenate(tiers)
    np.testing.assert_array_equal(tiers == 0, keep)
    assert 0 < tiers.sum() < POOL


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_batch_invariance_every_bucket(setup, pool, data):
    c, keep, _, _ = setup
    ids, mask = pool
    hard, easy = np.flatnonzero(~keep), np.flatnonzero(keep)
    # How many escalate: hits every bucket (0, 1, 2, 4, 8), empty and full included.
    n_hard = data.draw(st.sampled_from([0, 1, 2, 3, 5, 8]))
    rows = np.concatenate(
        [
            data.draw(st.lists(st.sampled_from(list(hard)), min_size=n_hard, max_size=n_hard)),
            data.draw(
                st.lists(st.sampled_from(list(easy)), min_size=B - n_hard, max_size=B - n_hard)
            ),
        ]
    ).astype(int)
    rows = np.asarray(data.draw(st.permutations(list(rows))))
    out = c.serving_step(B)(_inputs(ids[rows], mask[rows]))
    assert int(np.sum(np.asarray(out.tier))) == n_hard
    alone = c.serving_step(1)
    for j, r in enumerate(rows):
        one = alone(_inputs(ids[r : r + 1], mask[r : r + 1]))
        assert int(one.tier[0]) == int(out.tier[j])
        np.testing.assert_array_equal(one.tokens[0], out.tokens[j])


@pytest.fixture(scope="module")
def coarse(setup):
    """Batch-4 cascade with buckets (0, 4) only: cheap to compile for the tests below."""
    c, *_ = setup
    cfg = Seq2SeqCascadeConfig(max_new_tokens=NEW, bucket_fractions=(0.0, 1.0))
    return ElangSeq2Seq(c.swift, c.super_model, c.head, cfg)


def test_per_model_inputs_and_padding_rows(coarse, pool):
    ids, mask = pool
    rows = slice(0, 4)
    swift_in = _inputs(ids[rows], mask[rows])
    # The Super model's own "tokenization": three more padding columns.
    super_in = _inputs(np.pad(ids[rows], ((0, 0), (0, 3))), np.pad(mask[rows], ((0, 0), (0, 3))))
    step = coarse.serving_step(4)
    out = step((swift_in, super_in), threshold=math.inf)
    want = coarse.super_model.generate(super_in["input_ids"], super_in["attention_mask"], NEW)
    np.testing.assert_array_equal(out.tokens, want)
    # Padding rows never escalate and decode nothing (all pad).
    valid = np.array([1, 0, 1, 0], bool)
    out = step((swift_in, super_in), valid=valid, threshold=math.inf)
    np.testing.assert_array_equal(out.tier, valid.astype(int))
    np.testing.assert_array_equal(out.tokens[~valid], 0)
    np.testing.assert_array_equal(out.tokens[valid], np.asarray(want)[valid])


def test_decision_is_taken_before_any_decoding(setup, pool, monkeypatch):
    """Count encoder/decoder calls per model under the compiled step: an all-kept batch
    never touches the Super model, an all-escalated one never runs the Swift decoder."""
    c, *_ = setup
    calls = []
    decode, encode = T5ForConditionalGeneration.decode, T5ForConditionalGeneration.encode

    def tag(model):
        return "swift" if model.config.num_layers == 1 else "super"

    def counted_decode(self, *a, **kw):
        t = tag(self)
        jax.debug.callback(lambda: calls.append(("decode", t)))
        return decode(self, *a, **kw)

    def counted_encode(self, *a, **kw):
        t = tag(self)
        jax.debug.callback(lambda: calls.append(("encode", t)))
        return encode(self, *a, **kw)

    monkeypatch.setattr(T5ForConditionalGeneration, "decode", counted_decode)
    monkeypatch.setattr(T5ForConditionalGeneration, "encode", counted_encode)
    cfg = Seq2SeqCascadeConfig(max_new_tokens=NEW, bucket_fractions=(0.0, 1.0))
    step = ElangSeq2Seq(c.swift, c.super_model, c.head, cfg).serving_step(4)
    ids, mask = pool
    x = _inputs(ids[:4], mask[:4])

    def run(threshold):
        calls.clear()
        jax.block_until_ready(step(x, threshold=threshold))
        jax.effects_barrier()
        return set(calls)

    assert run(-math.inf) == {("encode", "swift"), ("decode", "swift")}
    assert run(math.inf) == {("encode", "swift"), ("encode", "super"), ("decode", "super")}
    # The Swift decoder runs once per generated token, never more than max_new_tokens.
    run(-math.inf)
    assert 1 <= calls.count(("decode", "swift")) <= NEW


def test_head_targets_normalise_eos_and_pad():
    eos, pad = 1, 0
    swift = np.array(
        [
            [5, 6, 1, 0, 0],  # same as Super
            [5, 6, 1, 7, 7],  # same once everything after EOS is pad
            [5, 6, 0, 0, 0],  # no EOS: cut short, not a match
            [5, 6, 7, 1, 0],  # one more token
            [5, 1, 6, 1, 0],  # first EOS decides
        ]
    )
    sup = np.array([[5, 6, 1], [5, 6, 1], [5, 6, 1], [5, 6, 1], [5, 1, 9]])
    got = make_head_targets(swift, sup, eos_token_id=eos, pad_token_id=pad)
    np.testing.assert_array_equal(got, [1, 1, 0, 0, 1])
    assert got.dtype == np.int32
    np.testing.assert_array_equal(normalize_tokens(swift[1:2], length=3), [[5, 6, 1]])
    np.testing.assert_array_equal(normalize_tokens(sup[:1], length=5), [[5, 6, 1, 0, 0]])

    def overlap(a, b):
        return (a == b).mean(axis=1)

    got = make_head_targets(swift, sup, rule="quality", quality_fn=overlap, threshold=0.9)
    np.testing.assert_array_equal(got, [1, 1, 0, 0, 1])
    with pytest.raises(ValueError, match="needs quality_fn"):
        make_head_targets(swift, sup, rule="quality")
    with pytest.raises(ValueError, match="unknown rule"):
        make_head_targets(swift, sup, rule="bleu")
    with pytest.raises(ValueError, match="same m"):
        make_head_targets(swift, sup[:2])


def test_head_training_learns_a_linear_rule(setup):
    c, *_ = setup
    rng = np.random.RandomState(1)
    ids = rng.randint(2, 99, size=(128, S)).astype(np.int32)
    mask = np.ones_like(ids)
    feats = np.asarray(pooled_encoder_features(c.swift, ids, mask))
    # A known linear rule on the centred features; about 30% "good enough".
    proj = (feats - feats.mean(0)) @ rng.randn(feats.shape[1])
    targets = (proj > np.quantile(proj, 0.7)).astype(np.int32)

    def fresh():
        return EnergyHead(c.swift.config.d_model, rngs=nnx.Rngs(7))

    head, hist = train_energy_head(
        fresh(), feats, targets, steps=300, lr=3e-2, batch_size=32, seed=0
    )
    assert hist["loss"].shape == (300,)
    assert hist["loss"][-20:].mean() < 0.5 * hist["loss"][:20].mean()
    assert float(hist["accuracy"]) >= 0.9
    # The energy itself separates good from bad (what the router reads).
    energy = np.asarray(energy_score(head(jnp.asarray(feats))))
    auc = (energy[targets == 1][:, None] > energy[targets == 0][None, :]).mean()
    assert auc >= 0.9
    # Deterministic given the seed; features from (swift, inputs) are the same features.
    again, _ = train_energy_head(
        fresh(), (c.swift, _inputs(ids, mask)), targets, steps=300, lr=3e-2, batch_size=32
    )
    np.testing.assert_allclose(again.out.kernel[...], head.out.kernel[...], atol=1e-6)


def test_costs_and_calibration():
    swift = T5Config.tiny_v1_1(num_layers=1, num_decoder_layers=2)
    sup = T5Config.tiny_v1_1(num_layers=2, num_decoder_layers=3)
    enc, dec = t5_flops(sup, S, NEW)
    assert enc > 0 and dec > 0
    keep_cost, esc_cost = seq2seq_tier_costs(swift, sup, S, NEW)
    assert 0 < keep_cost < 1 < esc_cost
    # Good iff score > 0: the cheapest threshold matching Super keeps exactly the good ones.
    rng = np.random.RandomState(0)
    scores = rng.randn(200)
    good = scores > 0
    point = calibrate_seq2seq_threshold(scores, good, [keep_cost, esc_cost], CalibrationTarget())
    t = point.setting[0]
    assert scores[good].min() >= t > scores[~good].max()
    assert point.accuracy == 1.0
    assert point.cost == pytest.approx(good.mean() * keep_cost + (~good).mean() * esc_cost)
    # Tolerating a 5-point drop buys a cheaper point.
    loose = calibrate_seq2seq_threshold(
        scores, good, [keep_cost, esc_cost], CalibrationTarget(epsilon=0.05)
    )
    assert loose.cost < point.cost and loose.accuracy >= 0.95


def test_bad_input(setup, pool):
    with pytest.raises(ValueError, match="threshold is NaN"):
        Seq2SeqCascadeConfig(threshold=float("nan"))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Seq2SeqCascadeConfig(temperature=-1.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Seq2SeqCascadeConfig(temperature=float("nan"))
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        Seq2SeqCascadeConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="unknown score"):
        Seq2SeqCascadeConfig(score="bleu")
    c, *_ = setup
    with pytest.raises(ValueError, match="head takes width 16"):
        ElangSeq2Seq(c.swift, c.super_model, EnergyHead(16, rngs=nnx.Rngs(0)))
    ids, mask = pool
    step = c.serving_step(B)
    x = _inputs(ids[:B], mask[:B])
    with pytest.raises(ValueError, match="different batch sizes"):
        step((x, _inputs(ids[: B - 1], mask[: B - 1])))
    with pytest.raises(ValueError, match="built for batch 8"):
        step(_inputs(ids[: B + 1], mask[: B + 1]))
    with pytest.raises(ValueError, match="non-NaN"):
        step(x, threshold=float("nan"))
    with pytest.raises(ValueError, match="valid must have shape"):
        step(x, valid=np.ones(B - 1, bool))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        step(_inputs(ids[:B] + 200, mask[:B]))
    with pytest.raises(ValueError, match="targets must be integers"):
        train_energy_head(c.head, np.zeros((4, 32)), np.array([0, 1, 2, 0]), steps=1)
