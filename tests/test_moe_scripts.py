"""The library behind train/relufy_glue.py and train/moefy_glue.py, on a tiny random BERT:
the ReLU copy and the check after the swap, and the MoEfication sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from elang_jax import data, training
from elang_jax.hf import from_pretrained, save_pretrained
from elang_jax.models import BertConfig, BertForSequenceClassification, FeedForward
from elang_jax.moe import (
    MoEConfig,
    SplitMethod,
    SweepConfig,
    moefy_sweep,
    relu_copy,
    swap_metrics,
)

VOCAB, T = 50, 16


def _tiny_bert(hidden_act: str) -> BertForSequenceClassification:
    config = BertConfig.tiny(vocab_size=VOCAB, intermediate_size=48, hidden_act=hidden_act)
    return BertForSequenceClassification(config, rngs=nnx.Rngs(0))


def _encoded(n: int, seed: int) -> data.Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, T + 1, n).astype(np.int32)
    return data.Encoded(
        input_ids=[rng.integers(1, VOCAB, t).astype(np.int32) for t in lengths],
        token_type_ids=[np.zeros(t, np.int32) for t in lengths],
        lengths=lengths,
        labels=rng.integers(0, 2, n).astype(np.int32),
        max_length=T,
    )


def test_relu_copy_swaps_the_activation_and_the_check_scores_the_copy(tmp_path):
    gelu_dir = save_pretrained(_tiny_bert("gelu"), tmp_path / "gelu")
    relu_dir = relu_copy(gelu_dir, tmp_path / "relu")
    config = json.loads((relu_dir / "config.json").read_text())
    assert config["hidden_act"] == "relu"
    assert json.loads((gelu_dir / "config.json").read_text())["hidden_act"] != "relu"
    others = {f.name for f in gelu_dir.iterdir()} - {"config.json"}
    assert others and others <= {f.name for f in relu_dir.iterdir()}

    relu = from_pretrained(relu_dir, head="sequence_classification")
    assert isinstance(relu, BertForSequenceClassification)
    assert relu.config.hidden_act == "relu"
    dev = _encoded(12, seed=1)
    metrics = swap_metrics(relu_dir, dev, 8, (T,))
    assert metrics == training.evaluate(relu, dev, 8, (T,))
    assert metrics["num_examples"] == 12 and 0.0 <= metrics["accuracy"] <= 1.0


def _sweep_config(**kw) -> SweepConfig:
    base = dict(
        experts=(MoEConfig.tiny().num_experts,),
        active=(0.5, 1.0),
        methods=("random", "kmeans"),
        router_epochs=1,
        router_batch_size=16,
        impl="dense",
        max_tokens=200,
        batch_size=8,
        buckets=(T,),
    )
    return SweepConfig(**{**base, **kw})


def test_moefy_sweep_scores_every_cell_and_all_experts_match_the_dense_model():
    model = _tiny_bert("relu")
    train, dev = _encoded(24, seed=2), _encoded(16, seed=3)
    lines: list[str] = []
    results = moefy_sweep(model, train, dev, _sweep_config(), log=lines.append)
    assert isinstance(model.encoder.layers[0].ffn, FeedForward)  # the model is left alone
    e = MoEConfig.tiny().num_experts
    runs = results["runs"]
    assert [(r["method"], r["top_k"]) for r in runs] == [
        ("random", e // 2),
        ("random", e),
        ("kmeans", e // 2),
        ("kmeans", e),
    ]
    dense = results["dense_accuracy"]
    assert dense == training.evaluate(model, dev, 8, (T,))["accuracy"]
    for r in runs:
        assert r["num_experts"] == e and r["active"] == r["top_k"] / e
        assert r["accuracy_with_capacity_factor"] is None and r["calibrate_loss_last50"] is None
        assert len(r["captured_mass"]) == model.config.num_layers
        if r["top_k"] == e:  # every expert active: the dense FFN exactly
            assert r["accuracy"] == dense
    assert len(lines) == 1 + len(runs) and lines[0].startswith("dense dev accuracy")
    assert json.loads(json.dumps(results))["args"]["methods"] == ["random", "kmeans"]
    assert results["total_s"] >= 0


@pytest.mark.slow  # heavy; the default run keeps the suite under 12 minutes on 2 cores
def test_moefy_sweep_with_calibration_and_a_capacity_factor():
    model = _tiny_bert("relu")
    train, dev, calib = _encoded(24, seed=2), _encoded(16, seed=3), _encoded(24, seed=4)
    config = _sweep_config(
        active=(0.5,),
        methods=(SplitMethod.RANDOM,),
        calibrate_steps=2,
        calibrate_batch_size=8,
        eval_capacity_factor=1.25,
    )
    finetune = training.tiny("unused-tokenizer-dir", learning_rate=1e-2, warmup_ratio=0.0)
    with pytest.raises(ValueError, match="needs calibration examples"):
        moefy_sweep(model, train, dev, config)
    results = moefy_sweep(
        model, train, dev, config, calibration=calib, finetune=finetune, record={"x": 1}
    )
    (run,) = results["runs"]
    assert results["args"] == {"x": 1}
    assert np.isfinite(run["calibrate_loss_last50"]) and run["calibrate_steps"] == 2
    assert run["capacity_factor"] == 1.25
    assert 0.0 <= run["accuracy_with_capacity_factor"] <= 1.0


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(methods=("nope",)), "methods must be among"),
        (dict(router="nope"), "router must be one of"),
        (dict(active=(0.0,)), "active fractions"),
        (dict(experts=()), "experts must not be empty"),
        (dict(calibrate_steps=-1), "calibrate_steps"),
    ],
)
def test_sweep_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _sweep_config(**kw)
