"""The pair experiment (eval/pair.py, `elang_jax.benchmarks.evaluate_pair`): its config,
per-tier batches, and one end-to-end run of the `tiny` preset on tiny random models, each
tier with its own real tokenizer (MPNet's for Super, MiniLM's for Swift)."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from elang_jax import benchmarks as B
from elang_jax import data as D
from elang_jax import engine, jsonio
from elang_jax.benchmarks._eval_pair import _cascade_fractions
from elang_jax.benchmarks._pair_finetune import finetune_configs
from elang_jax.benchmarks._pair_models import PairModel, adopt_finished
from elang_jax.benchmarks._pair_report import SUPER_ROW, SWIFT_ROW, goals
from elang_jax.core import bucket_sizes, fitted_fractions
from elang_jax.demo._pair import run_pair_demo
from elang_jax.models import BertConfig


@pytest.fixture
def fast_compile():
    # Compiling dominates a run on tiny models; XLA's optimisations buy nothing there.
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def test_config_validation(minilm_dir):
    with pytest.raises(ValueError, match="batch_size"):
        B.PairEvalConfig(batch_size=0)
    with pytest.raises(ValueError, match="eval_buckets"):
        B.PairEvalConfig(eval_buckets=(16, 32))  # max_length 64 does not fit
    with pytest.raises(ValueError, match="sentence-pair"):
        B.PairEvalConfig(task="mrpc")
    with pytest.raises(ValueError, match="not both"):
        PairModel(model_dir="x", model_config=BertConfig.tiny())
    with pytest.raises(ValueError, match="learning_rate"):
        B.PairEvalConfig.full(super_recipe={"learning_rate": 0.0})
    full = B.PairEvalConfig.full(super_recipe={"train_examples": 4000})
    assert full.super_.finetune.train_examples == 4000 and full.swift.num_layers is None
    assert full.cache_path.parts[-2:] == ("pair", "sst2")
    tiny = B.PairEvalConfig.tiny(minilm_dir, minilm_dir, cache_dir="/tmp/x")
    layers = [m.model_config.num_layers for m in (tiny.super_, tiny.swift) if m.model_config]
    assert layers == [2, 1]
    # The composed pair: exits end at the last layer, keep-schedule targets speed up.
    with pytest.raises(ValueError, match="composed.super_exits: exit_layers must be strictly"):
        B.PairComposed(super_exits=(8, 4, 12))
    with pytest.raises(ValueError, match="acc_targets must be > 1"):
        B.PairComposed(acc_targets=(0.9,))
    with pytest.raises(ValueError, match="exit_train_examples"):
        B.PairComposed(exit_train_examples=0)
    with pytest.raises(ValueError, match="composed.packing must be one of"):
        B.PairComposed(packing="sideways")
    with pytest.raises(ValueError, match="timing_max_map_share"):
        B.PairEvalConfig(timing_max_map_share=0.0)
    assert B.PairEvalConfig(composed={"grid": 5}).composed == B.PairComposed(grid=5)
    assert B.PairEvalConfig(composed=None).composed is None


def test_methods_and_targets(minilm_dir, mpnet_dir):
    config = B.PairEvalConfig.tiny(mpnet_dir, minilm_dir, guarantee_delta=0.1)
    names = [m.name for m in config.methods]
    assert len(names) == len(set(names)) == 10
    assert "E-LANG energy" in names and "CascadeBERT with DAR (guarantee)" in names
    guarantee = config.target_for("guarantee")
    assert guarantee.objective == "guarantee" and guarantee.delta == 0.1
    assert guarantee.epsilon == config.calibration.epsilon == config.target.epsilon
    assert config.replace(cascadebert=False, guarantee_delta=None).methods == B.BASE_METHODS
    # CascadeBERT's rows run the plain recipe: without distillation, the Swift's own.
    assert config.spec("swift_dar") == config.spec("swift_ce") == config.swift
    distilled = config.replace(swift=PairModel(distill=B.Distill(alpha=0.3)))
    assert distilled.spec("swift").distill == B.Distill(alpha=0.3)
    assert distilled.spec("swift_ce").distill is None
    with pytest.raises(ValueError, match="guarantee_delta must lie in"):
        config.replace(guarantee_delta=1.0)
    with pytest.raises(ValueError, match="distill.alpha must be in"):
        B.Distill(alpha=2.0)


def _paired_dev(minilm_dir, mpnet_dir):
    # 37 SST-2 dev sentences, each tier's own tokenization, in paired batches of 16.
    examples = D.select_examples(D.read_glue("sst2", "dev"), np.arange(37))
    enc = {
        "super": D.encode_glue(D.load_tokenizer(mpnet_dir), examples, 64, truncate=True),
        "swift": D.encode_glue(D.load_tokenizer(minilm_dir), examples, 64, truncate=True),
    }
    return enc, B.paired_batches(enc, "super", 16, D.LengthBuckets((16, 32, 64)))


def test_paired_batches_hold_the_same_rows(minilm_dir, mpnet_dir):
    enc, batches = _paired_dev(minilm_dir, mpnet_dir)
    assert len(batches) == 3
    seen = []
    for b in batches:
        sup, sw = b["super"], b["swift"]
        np.testing.assert_array_equal(sup.index, sw.index)
        np.testing.assert_array_equal(sup.valid, sw.valid)
        np.testing.assert_array_equal(sup.labels, sw.labels)
        for k, e in enc.items():
            for r, i in enumerate(b[k].index[b[k].valid]):
                n = int(e.lengths[i])
                np.testing.assert_array_equal(b[k].input_ids[r, :n], e.input_ids[i])
                assert b[k].attention_mask[r].sum() == n
        seen.extend(sup.index[sup.valid].tolist())
    assert sorted(seen) == list(range(37))


def test_cascade_buckets_fit_the_calibration_counts(minilm_dir, mpnet_dir):
    enc, batches = _paired_dev(minilm_dir, mpnet_dir)
    config = B.PairEvalConfig.tiny(mpnet_dir, minilm_dir, batch_size=16, cascade_buckets=3)
    # The longest examples escalate: the short batch routes none, the long ones most.
    escalated = enc["super"].lengths > np.quantile(enc["super"].lengths, 0.6)
    counts = [int(escalated[b["super"].index[b["super"].valid]].sum()) for b in batches]
    assert len(set(counts)) > 1
    rows = [b["super"].num_valid for b in batches]
    weights = [r * b["super"].input_ids.shape[1] for r, b in zip(rows, batches, strict=True)]
    fractions = _cascade_fractions(config, escalated, batches)
    assert fractions == fitted_fractions(counts, rows, 16, 3, weights)
    assert len(bucket_sizes(16, fractions)) <= 4
    even = dataclasses.replace(config, fit_cascade_buckets=False)
    assert _cascade_fractions(even, escalated, batches) == (0.0, 1 / 3, 2 / 3, 1.0)


def test_tiny_end_to_end(minilm_dir, mpnet_dir, tmp_path, fast_compile):
    # With the guarantee rows: the composed pair is calibrated for both targets at once.
    # Every row timed in a group of its own, released before the next compiles (on Linux).
    config = B.PairEvalConfig.tiny(
        mpnet_dir,
        minilm_dir,
        cache_dir=str(tmp_path / "cache"),
        guarantee_delta=0.2,
        timing_max_map_share=1e-6,
    )
    # Through the pair demo (`elang-jax demo --pair`): evaluate_pair, tables, files.
    printed: list[str] = []
    result = run_pair_demo(config, out_dir=tmp_path / "out", echo=printed.append)
    for name in ("results.json", "results.csv", "frontier.png", "pair.json"):
        assert (tmp_path / "out" / name).is_file(), name
    demo_rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["method"] for r in demo_rows] == [r["method"] for r in result["rows"]]
    assert any("E-LANG energy" in line for line in printed)
    rows = {r["method"]: r for r in result["rows"]}
    methods = config.methods
    composed_rows = [B.COMPOSED_ROW, f"{B.COMPOSED_ROW} (guarantee)"]
    assert list(rows) == [SUPER_ROW, SWIFT_ROW, *(m.name for m in methods), *composed_rows]
    assert {m.target for m in methods} == {"accuracy", "guarantee"}
    # Every score; CascadeBERT with and without DAR.
    assert {m.score for m in methods} == {"energy", "softmax_lse", "max_prob"}
    assert {m.swift for m in methods} == {"swift", "swift_ce", "swift_dar"}
    labels = np.asarray(result["dev_labels"])
    assert result["dev_examples"] == len(labels) == config.eval_limit
    assert result["calib_examples"] == config.calibration.holdout
    for name, r in rows.items():
        pred = np.asarray(result["predictions"][name])
        assert pred.shape == labels.shape
        assert r["accuracy"] == pytest.approx(float((pred == labels).mean()))
        assert 0.0 <= r["to_super"] <= 1.0
        assert r["measured_speedup"] > 0 and r["pass_ms"] > 0
    assert rows[SUPER_ROW]["flop_speedup"] == 1.0 and rows[SUPER_ROW]["to_super"] == 1.0
    timed = [name for group in result["timing_groups"] for name in group]
    assert timed == list(rows)[1:]  # every row but Super, the reference, once
    if engine.memory_maps() is not None:
        assert all(len(group) == 1 for group in result["timing_groups"])
        held, cap = result["memory_maps"]
        assert 0 < held <= cap
    # Swift is the 1-layer model: cheaper than Super and than every cascade.
    assert rows[SWIFT_ROW]["flop_speedup"] > 1.5
    for m in methods:
        r = rows[m.name]
        # A cascade pays Swift on everything and Super on the escalated share.
        assert rows[SWIFT_ROW]["flop_speedup"] >= r["flop_speedup"] > 0
        if r["to_super"] < 1.0:
            assert r["flop_speedup"] > 1.0
        assert r["offline_agreement"] == 1.0
        # Fitted buckets: at most `cascade_buckets` sizes besides the empty one, and the
        # rows they pad only add FLOPs.
        assert r["buckets"][0] == 0 and r["buckets"][-1] == config.batch_size
        assert len(r["buckets"]) <= config.cascade_buckets + 1
        assert 0 < r["executed_flop_speedup"] <= r["flop_speedup"] * (1 + 1e-9)
        assert r["measured_over_flop"] == pytest.approx(r["measured_speedup"] / r["flop_speedup"])
        assert 0.0 <= r["calib_accuracy"] <= 1.0 and isinstance(r["target_met"], bool)
    assert list(result["finetune"]) == ["super", "swift", "swift_ce", "swift_dar"]
    # Without distillation CascadeBERT's plain Swift is the Swift; the DAR one is trained.
    assert result["finetune"]["swift_ce"] == result["finetune"]["swift"]
    for role in ("super", "swift", "swift_dar"):
        f = result["finetune"][role]
        assert not f["cached"] and f["seconds"] > 0 and f["steps"] == 3
        assert f["train_seconds"] == pytest.approx(f["seconds"])
    # The PyTorch peers ran the same checkpoints at the first method's routing.
    assert set(result["peers"]) == {
        "PyTorch TangoBERT re-batching",
        "PyTorch batch 1 (E-LANG code)",
    }
    for p in result["peers"].values():
        assert p["routing_of"] == methods[0].name and p["ours_speedup"] > 0
        assert p["prediction_agreement"] >= 0.95  # float noise may flip a borderline row
    # The composed pair: calibrated jointly, its compiled step equal to the offline replay.
    for name, target in zip(composed_rows, ("accuracy", "guarantee"), strict=True):
        c = rows[name]
        assert c["target"] == target and c["kind"] == "composed"
        assert c["calib_replay_agreement"] == 1.0
        assert c["swift_exits"] == [1] and c["super_exits"] == [1, 2]
        assert 1.0 <= c["super_layers_mean_escalated"] <= 2.0 or c["to_super"] == 0.0
        assert c["swift_layers_mean"] == 1.0
        assert 0.0 < c["acc_rate"] <= 1.0 and len(c["keep_schedules"]) >= 1
        assert c["flop_speedup"] > 0 and isinstance(c["target_met"], bool)
        # Buckets round rows up: the step executes at least the analytic FLOPs.
        assert 0 < c["executed_flop_speedup"] <= c["flop_speedup"] * (1 + 1e-9)
        # Exit buckets refitted after calibration: never more rows on the calibration split.
        assert c["buckets_fitted"] and set(c["exit_buckets"]) == {"swift", "super"}
        for sizes in c["exit_buckets"].values():
            assert sizes[0] == 0 and sizes[-1] == config.batch_size
        even, fitted = c["calib_executed_flop_speedup_even"], c["calib_executed_flop_speedup"]
        assert 0 < even <= fitted * (1 + 1e-12)
    # Only the guarantee's candidate carries a bound on the drop.
    assert rows[B.COMPOSED_ROW]["upper_bound_drop"] is None
    assert rows[composed_rows[1]]["upper_bound_drop"] is not None
    assert set(result["goals"]) == {"E-LANG energy", B.COMPOSED_ROW}
    for g in result["goals"].values():
        assert {"accuracy_drop_met", "measured_speedup_met", "measured_over_flop_met"} <= set(g)
    assert result["goals"] == goals(result["rows"])
    table = B.format_pair(result)
    assert "E-LANG energy" in table and "goals" in table and "fine-tuned now" in table
    assert "FLOPs executed, padding rows of its buckets included" in table
    assert "Super rows run per batch of 16 (buckets fitted" in table
    assert "exit buckets of 16 rows (fitted to the calibration split): swift (0," in table

    path = tmp_path / "pair.json"
    jsonio.write_json(result, path)
    saved = json.loads(path.read_text())
    assert saved["args"]["super_"]["finetune"]["learning_rate"] == 1e-3
    assert len(saved["predictions"][SUPER_ROW]) == config.eval_limit

    # A second run loads both models from the cache.
    models = B.finetune_pair(config)
    assert models["super"].cached and models["swift"].cached
    assert models["super"].dev_accuracy == result["finetune"]["super"]["dev_accuracy"]

    # A finished run of the same recipe is adopted; one of another recipe is not.
    ft = finetune_configs(config)["swift"]
    source = tmp_path / "cache" / "swift"
    assert adopt_finished(source, tmp_path / "adopted", ft)
    assert (tmp_path / "adopted" / "final" / "config.json").is_file()
    assert not adopt_finished(source, tmp_path / "other", ft.replace(learning_rate=1.0))
    assert not (tmp_path / "other").exists()
