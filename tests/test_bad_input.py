"""Every public entry point gives the right answer or a clear error on bad input.

Each test here failed before its fix: a threshold on a score, an accepted infinite or
negative temperature, NaN counted as correct, MoE calls on zero tokens, fractional counts,
silent dtype casts on checkpoint import, and tracebacks from the console command.
"""

from __future__ import annotations

import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elang_jax import BertConfig, BertForSequenceClassification, save_pretrained
from elang_jax.calibration import (
    CalibrationTarget,
    calibrate,
    fit_temperature,
    threshold_candidates,
)
from elang_jax.cascade import Seq2SeqCascadeConfig, TierConfig, calibrate_thresholds, simulate
from elang_jax.cli import main
from elang_jax.compose import ComposedTierConfig
from elang_jax.exits import MultiExitConfig
from elang_jax.hf import CheckpointMismatchError, from_pretrained
from elang_jax.moe import MoEConfig, MoEFeedForward, MoEImpl
from elang_jax.pruning import KeepSchedule
from elang_jax.routing import Score, check_temperature, score

# --------------------------------------------------------------------- 1. thresholds


def test_threshold_candidates_lie_between_scores():
    got = threshold_candidates(np.array([0.5, 0.2, 0.9, 0.5, np.nan]))
    np.testing.assert_array_equal(got, [np.inf, 0.7, 0.35, -np.inf])
    s = np.random.RandomState(0).rand(1000)
    thinned = threshold_candidates(s, num=10)
    assert len(thinned) == 12 and np.all(np.diff(thinned) < 0)
    assert not np.isin(thinned, s).any()
    with pytest.raises(ValueError, match="num must be a positive int"):
        threshold_candidates(s, num=0)


def test_cascade_threshold_survives_score_jitter():
    """A calibration example whose score moves by ~4e-7 (another batch or bucket shape)
    keeps its tier: the chosen threshold is never one of the calibration scores."""
    rng = np.random.RandomState(0)
    n = 300
    s = np.linspace(0.0, 1.0, n)
    good = rng.rand(n) < s  # Swift is right more often when confident
    scores = np.stack([s, np.zeros(n)], 1)
    correct = np.stack([good, np.ones(n, bool)], 1)
    for target in (CalibrationTarget(epsilon=0.05), CalibrationTarget(epsilon=0.2)):
        op = calibrate_thresholds(scores, correct, np.array([0.2, 1.0]), target)
        assert op.setting[0] not in s
        tier = simulate(scores, np.asarray(op.setting))
        for jitter in (-4e-7, 4e-7):
            np.testing.assert_array_equal(simulate(scores + jitter, np.asarray(op.setting)), tier)


def test_composed_candidates_come_from_the_one_generator():
    from elang_jax.compose._calibrate import _between

    s = np.random.RandomState(1).randn(500).astype(np.float32)
    assert _between(s, 4) == [float(t) for t in threshold_candidates(s, 4)]
    assert not np.isin(_between(s, 4), s).any()


# -------------------------------------------------------------------- 2. temperatures


@pytest.mark.parametrize("bad", [math.inf, -math.inf, 0.0, -1.0, math.nan, 1e-40, 1e31])
def test_config_temperatures_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match=r"tier 'a': temperature must be > 0 and finite"):
        TierConfig(name="a", temperature=bad)
    with pytest.raises(ValueError, match=r"tier 'a': temperature must be > 0 and finite"):
        ComposedTierConfig.make(name="a", temperature=bad)
    with pytest.raises(ValueError, match=r"temperature must be > 0 and finite.*temperature="):
        Seq2SeqCascadeConfig(temperature=bad)
    with pytest.raises(ValueError, match="my_t must be > 0 and finite"):
        check_temperature(bad, "my_t")


@pytest.mark.parametrize("kind", [s.value for s in Score])
def test_tiny_temperature_scores_are_finite_eager_and_jitted(kind):
    z = np.array([[1e9, 0.0, -3.0], [2.0, 1.0, 0.5], [0.0, 0.0, 0.0]], np.float32)
    for t in (1e-30, 1e-20, 1e-6):
        eager = np.asarray(score(kind, z, t))
        jitted = np.asarray(jax.jit(lambda z, t=t: score(kind, z, t))(z))
        traced = np.asarray(jax.jit(lambda z, t: score(kind, z, t))(z, t))
        assert np.isfinite(eager).all(), (kind, t, eager)
        np.testing.assert_array_equal(jitted, eager)
        np.testing.assert_allclose(traced, eager, rtol=1e-6)


def test_stable_energy_keeps_its_gradient():
    # computed as max z + T * logsumexp((z - max z) / T): the gradient is still softmax(z / T)
    z = jnp.asarray(np.random.RandomState(0).randn(4, 5), jnp.float32)
    for t in (0.5, 1.0, 3.0):
        g = jax.grad(lambda z, t=t: score("energy", z, t).sum())(z)
        np.testing.assert_allclose(g, jax.nn.softmax(z / t, axis=-1), rtol=1e-5, atol=1e-7)


def test_temperature_arguments_are_checked_when_not_python_floats():
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        score("energy", z, np.float32(-1.0))
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        score("max_prob", z, jnp.asarray(0.0))
    # Traced, it cannot raise: the score is NaN, which never reaches a threshold.
    out = jax.jit(lambda t: score("energy", z, t))(-1.0)
    assert np.isnan(np.asarray(out)).all()
    assert np.isfinite(np.asarray(jax.jit(lambda t: score("energy", z, t))(2.0))).all()


# ------------------------------------------------------------------ 3. calibration input


def test_calibrate_rejects_nan_correctness_negative_cost_and_no_candidates():
    ref = np.ones(3, bool)
    target = CalibrationTarget()
    with pytest.raises(ValueError, match=r"correct must be booleans.*nan"):
        calibrate(np.array([[1.0, np.nan, 0.0]]), np.ones(1), ref, target)
    with pytest.raises(ValueError, match="reference_correct must be booleans"):
        calibrate(np.ones((1, 3), bool), np.ones(1), np.array([1.0, 0.5, 1.0]), target)
    with pytest.raises(ValueError, match="cost must be >= 0"):
        calibrate(np.ones((2, 3), bool), np.array([1.0, -0.5]), ref, target)
    with pytest.raises(ValueError, match="cost must be >= 0"):
        calibrate(np.ones((1, 3), bool), np.array([[1.0, -3.0, 5.0]]), ref, target)
    with pytest.raises(ValueError, match="cost holds infinity"):
        calibrate(np.ones((1, 3), bool), np.array([np.inf]), ref, target)
    with pytest.raises(ValueError, match="at least one candidate"):
        calibrate(np.zeros((0, 3), bool), np.zeros(0), ref, target)
    with pytest.raises(ValueError, match=r"settings must have one entry per candidate \(2\)"):
        calibrate(np.ones((2, 3), bool), np.ones(2), ref, target, settings=[0.5])


def test_fit_temperature_rejects_bad_labels_and_empty_input():
    logits = np.random.RandomState(0).randn(8, 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got \[-1\]"):
        fit_temperature(logits, np.array([0, 1, 2, 0, 1, 2, 0, -1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got \[3\]"):
        fit_temperature(logits, np.array([0, 1, 2, 0, 1, 2, 0, 3]))
    with pytest.raises(ValueError, match="at least one example"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, int))
    with pytest.raises(ValueError, match="integer class ids"):
        fit_temperature(logits, np.full(8, 0.5))


# ------------------------------------------------------------------------ 4. MoE sizes


@pytest.mark.parametrize("impl", list(MoEImpl))
@pytest.mark.parametrize("capacity_factor", [None, 1.25])
def test_moe_on_zero_tokens_returns_an_empty_output(impl, capacity_factor):
    config = MoEConfig.tiny(impl=impl, capacity_factor=capacity_factor, gate="softmax")
    moe = MoEFeedForward(8, 32, config, activation="relu", rngs=nnx.Rngs(0))
    out = moe.apply(jnp.zeros((2, 0, 8), jnp.float32))
    assert out.output.shape == (2, 0, 8)
    assert out.expert_ids.shape == (0, 2)
    for loss in (out.aux_loss, out.load_balance_loss, out.router_z_loss, out.dropped_fraction):
        assert float(loss) == 0.0
    assert jax.jit(moe)(jnp.zeros((0, 8), jnp.float32)).shape == (0, 8)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(capacity_factor=math.inf), "capacity_factor must be positive and finite"),
        (dict(capacity_factor=math.nan), "capacity_factor must be positive and finite"),
        (dict(load_balance_weight=math.nan), "load_balance_weight must be a finite number"),
        (dict(z_loss_weight=math.inf), "z_loss_weight must be a finite number"),
        (dict(dropless_capacity=math.inf), "dropless_capacity must be a positive finite"),
    ],
)
def test_moe_config_rejects_non_finite_numbers(kw, match):
    with pytest.raises(ValueError, match=match):
        MoEConfig.tiny(**kw)


# -------------------------------------------------------------- 5. counts, dtypes


def test_fractional_counts_are_rejected():
    # ValueError from the config's own check; under pytest the runtime type checker
    # (jaxtyping + beartype) may reject the float first, with a TypeError naming the field.
    bad = (ValueError, TypeError)
    with pytest.raises(bad, match="num_layers"):
        KeepSchedule(rate=0.5, num_layers=2.5)
    with pytest.raises(bad, match="patience"):
        MultiExitConfig(patience=1.7)
    with pytest.raises(bad, match="exit_layers"):
        MultiExitConfig(exit_layers=(1.5, 2))
    with pytest.raises(bad, match="exit_patience"):
        ComposedTierConfig.make(name="a", exit_patience=1.5)


def test_count_checks_name_the_field():
    # The checks themselves, whatever the type checker does first.
    from elang_jax.exits._config import _whole

    with pytest.raises(ValueError, match=r"patience must be a whole number.*patience=1\.7"):
        _whole(1.7, "patience")
    assert _whole(np.int64(3), "patience") == 3


def _tiny_hf(tmp_path):
    model = BertForSequenceClassification(BertConfig.tiny(num_labels=2), rngs=nnx.Rngs(0))
    return save_pretrained(model, tmp_path / "hf")


def test_integer_tensor_for_a_float_parameter_is_an_error_naming_it(tmp_path):
    from safetensors.numpy import load_file, save_file

    hf = _tiny_hf(tmp_path)
    tensors = load_file(str(hf / "model.safetensors"))
    key = "classifier.weight"
    tensors[key] = tensors[key].astype(np.int32)
    save_file(tensors, str(hf / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"classifier\.weight \(got int32"):
        from_pretrained(hf)


# ------------------------------------------------------------------ 6. CLI and files


def test_corrupt_files_are_named(tmp_path):
    hf = _tiny_hf(tmp_path)
    weights = hf / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors could not be read"):
        from_pretrained(hf)
    (hf / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        from_pretrained(hf)
    (hf / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match=r"config\.json must hold a JSON object"):
        from_pretrained(hf)


def test_convert_refuses_to_write_into_its_source(tmp_path):
    hf = _tiny_hf(tmp_path)
    before = sorted(p.name for p in hf.iterdir())
    with pytest.raises(ValueError, match="is the source directory"):
        main(["convert", str(hf), str(hf) + "/."])
    assert sorted(p.name for p in hf.iterdir()) == before


def test_console_convert_prints_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["elang-jax", "convert", str(tmp_path / "a/b/c"), "out"])
    assert main() == 2
    err = capsys.readouterr().err
    assert err.startswith("elang-jax convert: error: ") and err.count("\n") == 1
    hf = _tiny_hf(tmp_path)
    (hf / "model.safetensors").write_bytes(b"garbage")
    monkeypatch.setattr(sys, "argv", ["elang-jax", "convert", str(hf), str(tmp_path / "n")])
    assert main() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors" in err


def test_demo_out_that_cannot_be_written_fails_before_the_run(tmp_path, monkeypatch, capsys):
    import elang_jax.demo

    def no_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(elang_jax.demo, "run_demo", no_run)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo", "--quick", "--out", str(blocker / "sub")]) == 2
    assert "cannot be written" in capsys.readouterr().err
    assert main(["demo", "--quick", "--out", str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- CALM


def test_calm_gpt2_refuses_what_generate_refuses_and_takes_numpy_lengths():
    from elang_jax.exits import calm_generate_gpt2
    from elang_jax.models import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config.tiny(), rngs=nnx.Rngs(0))
    ids = np.full((2, 5), 3, np.int32)
    right_padded = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    empty_row = np.array([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    for mask in (right_padded, empty_row):
        with pytest.raises(ValueError, match="left-padded"):
            model.generate(ids, mask, 3)
        with pytest.raises(ValueError, match="left-padded"):
            calm_generate_gpt2(model, ids, mask, 3)
    out = calm_generate_gpt2(model, ids, None, np.int64(3), threshold=float("inf"))
    np.testing.assert_array_equal(out.tokens, model.generate(ids, None, 3))
