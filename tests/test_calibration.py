"""Routing scores and the shared threshold calibration."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from elang_jax.calibration import (
    CalibrationTarget,
    calibrate,
    clopper_pearson_upper,
    fit_temperature,
)
from elang_jax.cascade import calibrate_thresholds, cascade_candidates, simulate
from elang_jax.routing import energy_score, score, softmax_lse_score
from elang_jax.testing import assert_close


def test_energy_score_formula_and_dtype():
    z = np.array([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0]], np.float32)
    for t in (0.5, 1.0, 2.0):
        expect = t * np.log(np.exp(z / t).sum(-1))
        assert_close(energy_score(z, t), expect)
    out = energy_score(jnp.asarray(z, jnp.bfloat16))
    assert out.dtype == jnp.float32


def test_softmax_lse_range_for_two_classes():
    z = np.random.RandomState(0).randn(1000, 2).astype(np.float32) * 5
    s = np.asarray(softmax_lse_score(z))
    assert s.min() >= math.log(2) + 0.5 - 1e-5 and s.max() <= math.log(math.e + 1) + 1e-5
    # Monotone in the max probability: it is max-prob routing in disguise.
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    order = np.argsort(p.max(-1))
    assert np.all(np.diff(s[order]) >= -1e-6)


def test_orientation_higher_is_more_confident():
    confident = np.array([[10.0, 0.0, 0.0]], np.float32)
    unsure = np.array([[0.1, 0.0, 0.0]], np.float32)
    for kind in ("energy", "softmax_lse", "max_prob", "entropy", "margin"):
        assert float(score(kind, confident)[0]) > float(score(kind, unsure)[0]), kind


def test_score_errors():
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        energy_score(np.zeros((1, 2)), -1.0)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        score("max_prob", np.zeros((1, 2)), float("nan"))
    with pytest.raises(ValueError, match="unknown score 'nope'"):
        score("nope", np.zeros((1, 2)))


def test_target_validation():
    with pytest.raises(ValueError, match="epsilon must lie in"):
        CalibrationTarget(epsilon=-0.1)
    with pytest.raises(ValueError, match="delta must lie in"):
        CalibrationTarget(objective="guarantee", delta=1.5)
    with pytest.raises(ValueError, match="budget objective needs budget > 0"):
        CalibrationTarget(objective="budget")
    with pytest.raises(ValueError, match="budget objective needs budget > 0"):
        CalibrationTarget(objective="budget", budget=float("nan"))


def _two_tier_population(n, rng):
    """Swift is right more often when its score is high; Super is right 92% of the time."""
    s = rng.rand(n)
    swift_right = rng.rand(n) < 0.55 + 0.45 * s
    super_right = rng.rand(n) < 0.92
    return np.stack([s, np.zeros(n)], 1), np.stack([swift_right, super_right], 1)


def test_accuracy_and_budget_objectives():
    rng = np.random.RandomState(0)
    scores, correct = _two_tier_population(4000, rng)
    costs = np.array([0.25, 1.0])
    op = calibrate_thresholds(scores, correct, costs, CalibrationTarget(epsilon=0.0))
    tier = simulate(scores, np.asarray(op.setting))
    acc = correct[np.arange(4000), tier].mean()
    assert acc >= correct[:, 1].mean() - 1e-12
    assert op.accuracy == pytest.approx(acc)
    assert op.cost == pytest.approx((0.25 + (tier == 1) * 1.0).mean())
    # Nothing cheaper reaches the reference accuracy.
    corr, cost, _ = cascade_candidates(scores, correct, costs)
    cheaper = cost < op.cost - 1e-12
    assert not np.any(corr[cheaper].mean(1) >= correct[:, 1].mean())

    op_b = calibrate_thresholds(
        scores, correct, costs, CalibrationTarget(objective="budget", budget=0.6)
    )
    assert op_b.cost <= 0.6
    assert op_b.accuracy == pytest.approx(corr[cost <= 0.6].mean(1).max())
    with pytest.raises(ValueError, match="no candidate meets budget 0.1"):
        calibrate_thresholds(
            scores, correct, costs, CalibrationTarget(objective="budget", budget=0.1)
        )


def test_clopper_pearson_matches_known_values():
    # 0 failures in n: upper bound 1 - delta^(1/n).
    assert clopper_pearson_upper(0, 100, 0.05) == pytest.approx(1 - 0.05 ** (1 / 100))
    assert clopper_pearson_upper(5, 5, 0.1) == 1.0
    assert 0.05 < clopper_pearson_upper(5, 100, 0.05) < 0.12


def test_guarantee_holds_over_calibration_draws():
    """With probability >= 1 - delta over calibration draws, the chosen threshold's true
    (population) accuracy drop stays <= epsilon."""
    rng = np.random.RandomState(1)
    pop_scores, pop_correct = _two_tier_population(100_000, rng)
    eps, delta, trials, n = 0.02, 0.1, 150, 600
    failures = 0
    for _ in range(trials):
        idx = rng.choice(100_000, n, replace=False)
        op = calibrate_thresholds(
            pop_scores[idx],
            pop_correct[idx],
            np.array([0.25, 1.0]),
            CalibrationTarget(objective="guarantee", epsilon=eps, delta=delta),
        )
        tier = simulate(pop_scores, np.asarray(op.setting))
        drop = pop_correct[:, 1].mean() - pop_correct[np.arange(100_000), tier].mean()
        failures += drop > eps
    assert failures / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    # And it is not vacuous: it does skip the top tier for some examples.
    assert op.cost < 1.25


def test_calibrate_shape_errors():
    with pytest.raises(ValueError, match=r"correct must have shape \[candidates, examples\]"):
        calibrate(np.ones(3, bool), np.ones(3), np.ones(3, bool), CalibrationTarget())
    with pytest.raises(ValueError, match=r"cost must have shape \[2\]"):
        calibrate(np.ones((2, 3), bool), np.ones(3), np.ones(3, bool), CalibrationTarget())


def test_fit_temperature_recovers_the_generating_temperature():
    rng = np.random.RandomState(0)
    true_logits = rng.randn(20000, 4) * 2
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    # A model that is over-confident by a factor 3: temperature scaling should find T ~ 3.
    t = fit_temperature(true_logits * 3, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    with pytest.raises(ValueError, match="NaN or infinity"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))


def test_difficulty_ranking_loss():
    import jax

    from elang_jax.cascade import cascadebert_loss, difficulty_ranking_loss

    key = jax.random.key(0)
    conf = jnp.array([0.9, 0.8, 0.6, 0.55])
    hard = jnp.array([False, False, True, True])
    # Each easy example pairs with a hard one: hinge = max(0, 0.5 - (c_e - c_h)).
    loss = float(difficulty_ranking_loss(conf, hard, key, margin=0.5))
    pairs = [max(0.0, 0.5 - (e - h)) for e in (0.9, 0.8) for h in (0.6, 0.55)]
    assert min(pairs) - 1e-6 <= loss <= max(pairs) + 1e-6
    # Averaged over many keys, the pairing is uniform over the hard examples.
    keys = jax.random.split(key, 2000)
    mean = float(jnp.mean(jax.vmap(lambda k: difficulty_ranking_loss(conf, hard, k, 0.5))(keys)))
    assert mean == pytest.approx(np.mean(pairs), abs=0.01)
    # No hard (or no easy) example: nothing to rank.
    assert float(difficulty_ranking_loss(conf, jnp.zeros(4, bool), key)) == 0.0
    assert float(difficulty_ranking_loss(conf, jnp.ones(4, bool), key)) == 0.0
    # Padding rows never count, as easy or as hard partners.
    valid = jnp.array([True, False, True, False])
    only = float(difficulty_ranking_loss(conf, hard, key, 0.5, valid))
    assert only == pytest.approx(max(0.0, 0.5 - (0.9 - 0.6)))
    # The gradient pushes easy confidence up and hard confidence down.
    g = jax.grad(lambda c: difficulty_ranking_loss(c, hard, key, 0.5))(conf)
    assert float(g[:2].sum()) < 0 < float(g[2:].sum())
    logits = jnp.log(jnp.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45]]))
    total, parts = cascadebert_loss([logits, logits], jnp.zeros(4, jnp.int32), hard, key)
    assert float(total) == pytest.approx(float(parts["ce"].sum() + 0.5 * parts["dar"]))
