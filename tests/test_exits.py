"""Multi-exit encoders: the batched exit step against the full model, offline simulation and
single-example runs; training of the exits; calibration; bad input."""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elang_jax import BertConfig, BertForSequenceClassification, CalibrationTarget, MultiExit
from elang_jax.exits import (
    ExitPolicy,
    ExitTrainConfig,
    LossWeighting,
    MultiExitConfig,
    calibrate_exits,
    exit_scores,
    fit_exit_temperatures,
    joint_loss,
    loss_weights,
    simulate_exits,
    train_exit_heads,
)
from elang_jax.testing import assert_close

B, T, POOL, LAYERS = 8, 10, 48, 4


@pytest.fixture(scope="module")
def model():
    cfg = BertConfig.tiny(num_layers=LAYERS, num_labels=3, hidden_dropout=0.0)
    return BertForSequenceClassification(cfg, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def pool():
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 99, size=(POOL, T)).astype(np.int32)
    mask = np.ones_like(ids)
    for i, n in enumerate(rng.randint(3, T + 1, size=POOL)):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return ids, mask


def _inputs(ids, mask):
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))


def _safe_threshold(scores: np.ndarray) -> float:
    """A threshold near the median score but at least 1e-4 from every score, so that float
    differences between compiled programs cannot flip a decision."""
    s = np.sort(scores.ravel())
    gaps = np.diff(s)
    mid = len(s) // 2
    for off in range(len(gaps)):
        for i in (mid + off, mid - off):
            if 0 <= i < len(gaps) and gaps[i] > 2e-4:
                return float((s[i] + s[i + 1]) / 2)
    raise AssertionError("no gap")


@pytest.fixture(scope="module")
def entropy_setup(model, pool):
    me = MultiExit(model, MultiExitConfig.tiny(), rngs=nnx.Rngs(1))
    ids, mask = pool
    logits = np.asarray(me(ids, mask, np.zeros_like(ids)).logits)
    thr = _safe_threshold(exit_scores(logits[:-1], "entropy"))
    return me, logits, thr, me.exit_step(B), me.exit_step(1)


def test_never_exit_is_the_full_model_and_always_exit_is_the_first_exit(model, pool, entropy_setup):
    me, _, _, step, _ = entropy_setup
    ids, mask = pool[0][:B], pool[1][:B]
    full = model(ids, mask, np.zeros_like(ids)).logits
    out = step(_inputs(ids, mask), threshold=math.inf)
    np.testing.assert_array_equal(np.asarray(out.layers), LAYERS)
    np.testing.assert_array_equal(np.asarray(out.predictions), np.asarray(full.argmax(-1)))
    assert_close(out.logits, full, jnp.float32)
    first = me(ids, mask, np.zeros_like(ids)).logits[0]
    out = step(_inputs(ids, mask), threshold=-math.inf)
    np.testing.assert_array_equal(np.asarray(out.layers), 1)
    np.testing.assert_array_equal(np.asarray(out.predictions), np.asarray(first.argmax(-1)))
    assert_close(out.logits, first, jnp.float32)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_batch_invariance(entropy_setup, pool, data):
    me, logits, thr, step, alone = entropy_setup
    ids, mask = pool
    rows = np.asarray(data.draw(st.lists(st.integers(0, POOL - 1), min_size=B, max_size=B)))
    out = step(_inputs(ids[rows], mask[rows]), threshold=thr)
    for j, r in enumerate(rows):
        one = alone(_inputs(ids[r : r + 1], mask[r : r + 1]), threshold=thr)
        assert int(one.exit_index[0]) == int(out.exit_index[j])
        assert int(one.predictions[0]) == int(out.predictions[j])


def test_every_bucket_is_hit_and_matches_simulation(entropy_setup, pool):
    me, logits, thr, step, _ = entropy_setup
    ids, mask = pool
    sim = simulate_exits(logits, me.exit_layers, "entropy", thr)
    early, late = np.flatnonzero(sim.layers == 1), np.flatnonzero(sim.layers > 1)
    assert len(early) and len(late)
    seen = set()
    # n_late examples still run after the first exit: buckets 0, 2, 2, 4, 8 are hit.
    for n_late in (0, 1, 2, 3, 5, 8):
        rows = np.concatenate([np.resize(late, n_late), np.resize(early, B - n_late)])
        rows = np.random.RandomState(n_late).permutation(rows)
        out = step(_inputs(ids[rows], mask[rows]), threshold=thr)
        np.testing.assert_array_equal(np.asarray(out.layers), sim.layers[rows])
        np.testing.assert_array_equal(np.asarray(out.predictions), sim.predictions[rows])
        seen.add(min(n for n in (0, 2, 4, 8) if n >= n_late))
    assert seen == {0, 2, 4, 8}


def test_bucket_override_changes_only_the_rows_run(entropy_setup, pool):
    # Buckets fitted elsewhere (e.g. to a calibration split) replace the config's for one
    # step; the answers stay the simulation's, the packed sizes become the given ones.
    me, logits, thr, step, _ = entropy_setup
    ids, mask = pool
    sim = simulate_exits(logits, me.exit_layers, "entropy", thr)
    fitted = me.exit_step(B, bucket_fractions=(0.0, 3 / 8, 1.0))
    assert fitted is not step and me.exit_step(B, bucket_fractions=(0.0, 3 / 8, 1.0)) is fitted
    sizes = set()
    for start in range(0, POOL - B + 1, B):
        rows = np.arange(start, start + B)
        out = fitted(_inputs(ids[rows], mask[rows]), threshold=thr)
        np.testing.assert_array_equal(np.asarray(out.layers), sim.layers[rows])
        np.testing.assert_array_equal(np.asarray(out.predictions), sim.predictions[rows])
        used = np.asarray(out.buckets_used)[0]
        # After exit k the rows leaving later than k still run.
        running = [(sim.exit_index[rows] >= k).sum() for k in range(me.num_exits)]
        np.testing.assert_array_equal(used, [min(s for s in (0, 3, 8) if s >= n) for n in running])
        sizes |= set(used.tolist())
    assert sizes <= {0, 3, 8} and 3 in sizes
    with pytest.raises(ValueError, match=r"bucket fractions must lie in \[0, 1\], got 1.5"):
        me.exit_step(B, bucket_fractions=(0.0, 1.5))


def test_padding_rows_exit_first(entropy_setup, pool):
    me, _, _, step, _ = entropy_setup
    ids, mask = pool[0][:B], pool[1][:B]
    valid = np.arange(B) < 3
    out = step(_inputs(ids, mask), valid=valid, threshold=math.inf)
    np.testing.assert_array_equal(np.asarray(out.layers), np.where(valid, LAYERS, 0))


def test_patience_matches_simulation(model, pool):
    me = MultiExit(model, MultiExitConfig.tiny(policy="patience"), rngs=nnx.Rngs(1))
    ids, mask = pool[0][:B], pool[1][:B]
    logits = np.asarray(me(ids, mask, np.zeros_like(ids)).logits)
    step = me.exit_step(B)
    for patience in (1, 2, 3, 4):
        sim = simulate_exits(logits, me.exit_layers, "patience", patience=patience)
        out = step(_inputs(ids, mask), patience=patience)
        np.testing.assert_array_equal(np.asarray(out.layers), sim.layers)
        # Patience p can first leave at the exit after p agreeing ones.
        assert (sim.layers >= min(patience + 1, LAYERS)).all()


def test_exits_at_chosen_layers_and_mix(model, pool):
    cfg = MultiExitConfig.tiny(exit_layers=(2, 4), mix_cls=True, policy="max_prob")
    me = MultiExit(model, cfg, rngs=nnx.Rngs(1))
    ids, mask = pool[0][:B], pool[1][:B]
    out = me(ids, mask, np.zeros_like(ids))
    assert out.logits.shape == (2, B, 3) and out.features.shape == (B, LAYERS + 1, 32)
    # The untrained mix is one-hot on the exit's own layer: the same as no mix.
    plain = MultiExit(model, cfg.__class__(**{**cfg.__dict__, "mix_cls": False}), rngs=nnx.Rngs(1))
    assert_close(out.logits, plain(ids, mask, np.zeros_like(ids)).logits, jnp.float32)
    res = me.exit_step(B)(_inputs(ids, mask), threshold=-math.inf)
    np.testing.assert_array_equal(np.asarray(res.layers), 2)


def test_stage_two_trains_heads_only(model, pool):
    me = MultiExit(model, MultiExitConfig.tiny(mix_cls=True), rngs=nnx.Rngs(1))
    ids, mask = pool
    before = nnx.state(model, nnx.Param)
    before = {k: np.asarray(v) for k, v in nnx.to_flat_state(before)}
    out = me(ids, mask, np.zeros_like(ids))
    cls = np.asarray(out.features)
    # Learnable labels: a random linear function of the first layer's [CLS] vector.
    labels = (cls[:, 1] @ np.random.RandomState(1).randn(cls.shape[-1], 3)).argmax(-1)
    cfg = ExitTrainConfig(epochs=40, batch_size=16, learning_rate=1e-2)
    losses = train_exit_heads(me, cls, labels, cfg)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    after = {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    for k, v in before.items():
        np.testing.assert_array_equal(v, after[k])
    # The trained heads fit their training labels better than chance.
    logits = np.asarray(me.logits_from_features(jnp.asarray(cls), out.last_cls))
    assert (logits[0].argmax(-1) == labels).mean() > 0.8


@pytest.mark.slow  # test_eval_pair's end-to-end trains and caches exit heads this way
def test_frozen_exits_end_to_end_and_heads_round_trip(model, pool):
    """`train_frozen_exits` (features, then heads) on an Encoded set; `ExitHeads` holds
    exactly the trained part, so loading it into a fresh MultiExit reproduces the exits."""
    from elang_jax import data
    from elang_jax.exits import ExitHeads, train_frozen_exits

    ids, mask = pool
    lengths = mask.sum(-1)
    labels = (ids[:, 1] % 3).astype(np.int32)  # learnable from the first token
    encoded = data.Encoded(
        input_ids=[ids[i, :n] for i, n in enumerate(lengths)],
        token_type_ids=[np.zeros(n, np.int32) for n in lengths],
        lengths=lengths.astype(np.int32),
        labels=labels,
        max_length=T,
    )
    me = MultiExit(model, MultiExitConfig.tiny(pooling="mean"), rngs=nnx.Rngs(1))
    cfg = ExitTrainConfig(epochs=30, batch_size=16, learning_rate=1e-2)
    buckets = data.LengthBuckets((T,))
    losses = train_frozen_exits(me, encoded, cfg, batch_size=B, buckets=buckets)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    fresh = MultiExit(model, MultiExitConfig.tiny(pooling="mean"), rngs=nnx.Rngs(7))
    trained = nnx.state(ExitHeads(me), nnx.Param)
    nnx.update(ExitHeads(fresh), trained)
    inputs = (ids[:B], mask[:B], np.zeros_like(ids[:B]))
    assert_close(fresh(*inputs).logits, me(*inputs).logits)
    with pytest.raises(ValueError, match="no labels"):
        train_frozen_exits(me, dataclasses.replace(encoded, labels=None))


def test_joint_loss_weights():
    assert loss_weights("uniform", (1, 2, 3)) == pytest.approx((1 / 3,) * 3)
    assert loss_weights("pabee", (1, 2, 3)) == pytest.approx((1 / 6, 2 / 6, 3 / 6))
    assert loss_weights(LossWeighting.GEOMETRIC, (1, 2, 3)) == pytest.approx((1 / 7, 2 / 7, 4 / 7))
    logits = jnp.zeros((3, 4, 2))
    assert float(joint_loss(logits, jnp.zeros(4, jnp.int32), (1, 2, 3), "pabee")) == pytest.approx(
        math.log(2), rel=1e-6
    )


def test_calibration_and_temperatures(entropy_setup):
    me, logits, _, _, _ = entropy_setup
    labels = logits[-1].argmax(-1)  # the final exit is always right here
    temps = fit_exit_temperatures(logits, np.random.RandomState(0).randint(0, 3, POOL))
    assert temps.shape == (LAYERS,) and (temps > 0).all()
    for policy in ("entropy", "max_prob", "margin", "patience"):
        op = calibrate_exits(logits, labels, me.exit_layers, policy, CalibrationTarget())
        d = (
            simulate_exits(logits, me.exit_layers, policy, patience=int(op.setting))
            if policy == "patience"
            else simulate_exits(logits, me.exit_layers, policy, threshold=op.setting)
        )
        assert (d.predictions == labels).all()  # epsilon 0: no error against the final exit
        assert op.cost == pytest.approx(d.layers.mean() / LAYERS)
    op = calibrate_exits(
        logits, labels, me.exit_layers, "entropy", CalibrationTarget(objective="budget", budget=0.5)
    )
    assert op.cost <= 0.5


def test_bad_input(model, pool):
    with pytest.raises(ValueError, match="policy must be one of"):
        MultiExitConfig(policy="bogus")
    with pytest.raises(ValueError, match="NaN"):
        MultiExitConfig(threshold=float("nan"))
    with pytest.raises(ValueError, match="patience"):
        MultiExitConfig(patience=0)
    with pytest.raises(ValueError, match="last exit must be the final layer"):
        MultiExit(model, MultiExitConfig(exit_layers=(1, 2)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="strictly increasing"):
        MultiExitConfig(exit_layers=(2, 1))
    me = MultiExit(model, MultiExitConfig.tiny(), rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="temperatures"):
        me.set_temperatures([1.0, -1.0, 1.0, 1.0])
    step = me.exit_step(B)
    ids, mask = pool[0][:4], pool[1][:4]
    with pytest.raises(ValueError, match=r"shape \[8, t\]"):
        step(_inputs(ids, mask))
    ids, mask = pool[0][:B], pool[1][:B]
    with pytest.raises(ValueError, match="NaN"):
        step(_inputs(ids, mask), threshold=float("nan"))
    with pytest.raises(ValueError, match="out of range|vocab"):
        step(_inputs(ids + 10_000, mask))
    with pytest.raises(TypeError, match="BertForSequenceClassification"):
        MultiExit(model.encoder, MultiExitConfig(), rngs=nnx.Rngs(0))
    assert ExitPolicy("patience").score == "max_prob"


def test_mean_pooling_step_matches_full_pass(model, pool):
    me = MultiExit(model, MultiExitConfig.tiny(pooling="mean"), rngs=nnx.Rngs(1))
    ids, mask = pool[0][:B], pool[1][:B]
    out = me(ids, mask, np.zeros_like(ids))
    # Padding never enters the mean: row 0's features ignore what its padding holds.
    ids2 = ids.copy()
    ids2[mask == 0] = 7
    assert_close(out.features, me(ids2, mask, np.zeros_like(ids)).features, jnp.float32)
    logits = np.asarray(out.logits)
    assert_close(logits, me.logits_from_features(out.features, out.last_cls), jnp.float32)
    thr = _safe_threshold(exit_scores(logits[:-1], "max_prob"))
    sim = simulate_exits(logits, me.exit_layers, "max_prob", thr)
    res = me.exit_step(B, "max_prob")(_inputs(ids, mask), threshold=thr)
    np.testing.assert_array_equal(np.asarray(res.layers), sim.layers)
    with pytest.raises(ValueError, match="pooling"):
        MultiExitConfig(pooling="max")
