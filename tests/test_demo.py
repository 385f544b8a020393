"""`elang-jax demo`: configuration, reports, the evaluation-file reader, the CLI, timing, and
one end-to-end run on tiny random models (the `tiny` preset, a few dozen SST-2 examples).

The fast split of SST-2 into calibration sentences and training phrases is checked against
the original quadratic implementation here too: the demo is what made it worth speeding up.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from elang_jax import data
from elang_jax.cli import DEMO_TASKS, build_parser, demo_config, main
from elang_jax.core import bucket_sizes, fitted_fractions
from elang_jax.demo import (
    TASKS,
    DemoConfig,
    DemoError,
    MoESection,
    format_table,
    make_row,
    read_eval_file,
    run_demo,
    write_all,
)
from elang_jax.demo._method import fit_fractions
from elang_jax.timing import reference_passes, time_against_reference


@pytest.fixture(scope="module")
def tokenizer_dir(minilm_dir) -> Path:
    return minilm_dir


def _rows() -> list[dict]:
    cal = dict(setting={"threshold": 1.5}, accuracy=0.9, reference_accuracy=0.905, cost=0.4)
    return [
        make_row("Super", "reference", 0.9, 1.0, 1.0, {}),
        make_row("Swift", "reference", 0.85, 3.0, 2.6, {}),
        make_row(
            "E-LANG energy cascade",
            "cascade",
            0.895,
            1.4,
            1.3,
            {"inputs": 0.6},
            calibration={**cal, "target_met": True},
        ),
        make_row(
            "ACC token pruning",
            "pruning",
            0.89,
            1.8,
            1.9,
            {"tokens": 0.4},
            calibration={**cal, "target_met": False},
        ),
    ]


# ----------------------------------------------------------------------------------------------
# Configuration


def test_presets_are_valid_and_distinct(tokenizer_dir):
    full, quick = DemoConfig.full(), DemoConfig.quick()
    tiny = DemoConfig.tiny(tokenizer_dir)
    assert full.task == quick.task == tiny.task == "sst2"
    assert quick.finetune.train_examples < full.finetune.train_examples
    assert full.calibration.holdout_kind is data.HoldoutKind.SENTENCES
    # Recipes never share a cache directory by default.
    assert full.cache_path != quick.cache_path
    assert full.cache_path.name == "sst2"
    for task in TASKS:
        cfg = DemoConfig.full(task)
        assert cfg.max_length <= cfg.eval.buckets[-1]
    assert DemoConfig.full("mrpc").calibration.holdout_kind is data.HoldoutKind.RANDOM
    assert DemoConfig.full().moe.top_k == (2,)
    assert DemoConfig.full(moe=dict(active=(0.25, 0.5))).moe.top_k == (4, 2)
    json.dumps(tiny.to_json())


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(task="cola"), "unknown task 'cola'"),
        (dict(task="qnli"), "training split is not shipped"),
        (dict(task="mrpc"), "sentence-pair task"),
        (dict(calibration=dict(epsilon=2.0)), "epsilon"),
        (dict(eval=dict(buckets=(64, 32))), "ascending"),
        (dict(max_length=128), "must hold"),
        (dict(eval=dict(timing_rounds=0)), "timing_rounds"),
        (dict(pruning=dict(acc_targets=(0.5,))), "acc_targets"),
        (dict(moe=dict(active=(0.05,))), "at least one"),
        (dict(model_dir="/x", model_config=object()), "not both"),
        (dict(exits=dict(exit_pooling="max")), "exit_pooling"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(DemoError, match=match):
        DemoConfig(**kw)


def test_sections_nest_merge_and_keep_the_flat_names_of_cache_keys():
    full = DemoConfig.full()
    nested = full.to_json()
    assert nested["eval"]["timing_rounds"] == 3 and nested["moe"]["active"] == [0.25]
    assert nested["calibration"]["holdout_kind"] == "sentences"
    json.dumps(nested)
    # A mapping changes only the fields it names; the original config is left as it was.
    more = full.replace(moe={"experts": 16})
    assert more.moe.experts == 16 and more.moe.active == full.moe.active
    assert full.moe.experts == 8
    assert DemoConfig(moe=MoESection(experts=16)) == DemoConfig(moe={"experts": 16})
    with pytest.raises(DemoError, match=r"moe has no field\(s\) \['moe_experts'\]"):
        full.replace(moe={"moe_experts": 16})
    with pytest.raises(DemoError, match=r"finetune\.batch_size must be >= 1, got batch_size=0"):
        DemoConfig(finetune={"batch_size": 0})
    # The cache keys hash the names of the single-level config the sections replaced.
    flat = full.flat_json()
    assert set(flat) == {
        *("task", "preset", "cache_dir", "model_dir", "model_config", "tokenizer_dir"),
        *("swift_layers", "train_examples", "epochs", "batch_size", "learning_rate"),
        *("warmup_ratio", "max_length", "train_buckets", "save_every", "holdout"),
        *("holdout_kind", "holdout_seed", "epsilon", "eval_buckets", "eval_batch_size"),
        *("eval_limit", "timing_rounds", "timing_batches", "cascade_buckets"),
        *("exit_train_examples", "exit_epochs", "exit_pooling", "exit_buckets"),
        *("acc_variant", "acc_targets", "compose_acc_targets", "compose_grid"),
        *("moe_experts", "moe_active", "moe_train_examples", "moe_max_tokens"),
        *("moe_router_epochs", "moe_calibration_steps", "moe_calibration_lr", "moe_impl"),
        *("seed", "progress", "cascade_fit_buckets", "exits_fit_buckets"),
    }
    assert flat["train_buckets"] == [8, 16, 24, 32, 48, 64] and flat["eval_limit"] is None
    assert flat["compose_acc_targets"] == [1.25, 1.5, 1.75] and flat["exit_pooling"] == "mean"


# ----------------------------------------------------------------------------------------------
# Reports


def test_report_writers(tmp_path):
    rows = _rows()
    files = write_all(rows, tmp_path, "test")
    assert [f.name for f in files] == ["results.json", "results.csv", "frontier.png"]
    back = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in back] == [r["method"] for r in rows]
    for r in back:
        assert {"method", "accuracy", "flop_speedup", "measured_speedup", "skipped"} <= set(r)
    with (tmp_path / "results.csv").open() as f:
        lines = list(csv.DictReader(f))
    assert lines[2]["skipped_inputs"] == "0.6" and lines[2]["skipped_tokens"] == ""
    assert lines[3]["target_met"] == "False"
    assert json.loads(lines[2]["setting"]) == {"threshold": 1.5}
    png = (tmp_path / "frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    table = format_table(rows, "title")
    assert table.splitlines()[0] == "title"
    assert "60% inputs" in table and "missed" in table and "89.50" in table


def test_make_row_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown skipped"):
        make_row("x", "moe", 0.5, 1.0, 1.0, {"neurons": 0.5})
    with pytest.raises(ValueError, match="accuracy"):
        make_row("x", "moe", math.nan, 1.0, 1.0, {})


# ----------------------------------------------------------------------------------------------
# The user's evaluation file


def test_eval_file_reader(tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text("sentence\tlabel\na fine film \t1\na dull mess \t0\n")
    ex = read_eval_file("sst2", good)
    assert ex.text_a == ["a fine film ", "a dull mess "] and ex.labels.tolist() == [1, 0]
    with pytest.raises(DemoError, match="no such file"):
        read_eval_file("sst2", tmp_path / "missing.tsv")
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("text\tlabel\na fine film\t1\n")
    with pytest.raises(DemoError, match=r"missing column.*'sentence'.*header row"):
        read_eval_file("sst2", wrong)
    unlabelled = tmp_path / "unlabelled.tsv"
    unlabelled.write_text("sentence\na fine film\n")
    with pytest.raises(DemoError, match="label"):
        read_eval_file("sst2", unlabelled)
    bad_label = tmp_path / "bad_label.tsv"
    bad_label.write_text("sentence\tlabel\na fine film\tpositive\n")
    with pytest.raises(DemoError, match="unknown label"):
        read_eval_file("sst2", bad_label)
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\n")
    with pytest.raises(DemoError, match="no examples"):
        read_eval_file("sst2", empty)
    with pytest.raises(DemoError, match=r"'#1 String'"):
        read_eval_file("mrpc", good)


# ----------------------------------------------------------------------------------------------
# Command line


def test_cli_parsing(tmp_path):
    assert DEMO_TASKS == TASKS
    args = build_parser().parse_args(["demo"])
    config = demo_config(args)
    assert config == DemoConfig.full("sst2")
    assert config.cascade.fit_buckets and config.exits.fit_buckets
    even = demo_config(build_parser().parse_args(["demo", "--even-buckets"]))
    assert not even.cascade.fit_buckets and not even.exits.fit_buckets
    assert even.replace(cascade={"fit_buckets": True}, exits={"fit_buckets": True}) == config
    args = build_parser().parse_args(
        [
            "demo",
            "--task",
            "mrpc",
            "--quick",
            "--cache-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
            "--eval-file",
            "x.tsv",
            "--timing-rounds",
            "3",
            "--no-progress",
        ]
    )
    config = demo_config(args)
    assert config.preset == "quick" and config.task == "mrpc" and config.eval.timing_rounds == 3
    assert config.cache_path == tmp_path and not config.progress
    assert args.out == str(tmp_path / "out") and args.eval_file == "x.tsv"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--task", "cola"])


def test_cli_reports_a_missing_eval_file(tmp_path, capsys):
    # Fails before any download or fine-tuning.
    code = main(["demo", "--cache-dir", str(tmp_path), "--eval-file", str(tmp_path / "nope.tsv")])
    assert code == 2
    assert "no such file" in capsys.readouterr().err


def test_pair_flag(tmp_path, capsys):
    """`demo --pair`: the large pair's config from the flags, SST-2's or a sentence-pair
    task's; a missing --eval-file is named before any fine-tuning."""
    from elang_jax.benchmarks import Distill, PairComposed
    from elang_jax.demo._pair import pair_config

    args = build_parser().parse_args(["demo", "--pair", "--cache-dir", str(tmp_path)])
    assert args.pair
    config = pair_config(cache_dir=args.cache_dir)
    assert config.cache_path == tmp_path and config.swift.distill == Distill()
    # The distilled Swift learns from every training phrase; CascadeBERT's from a sample.
    assert config.swift.finetune.train_examples is None
    assert config.plain_swift.train_examples is not None
    assert config.peers and config.guarantee_delta is not None and config.cascadebert
    assert config.composed == PairComposed() and config.fit_cascade_buckets
    even = pair_config(even_buckets=True)
    assert not even.fit_cascade_buckets and even.composed == PairComposed(fit_buckets=False)
    quick = pair_config(quick=True, timing_rounds=2)
    assert quick.eval_limit == 128 and quick.timing_rounds == 2 and not quick.peers
    mrpc = pair_config("mrpc", cache_dir=tmp_path)
    assert mrpc.task == "mrpc" and mrpc.max_length == 128
    assert mrpc.calibration.holdout_kind == "random" and mrpc.eval_buckets[-1] == 128
    # Every training pair: the distilled Swift gets twice the plain recipe's epochs.
    assert mrpc.swift.finetune.epochs == 2 * mrpc.plain_swift.epochs
    assert mrpc.swift.finetune.train_examples is None
    missing = str(tmp_path / "nope.tsv")
    assert main(["demo", "--pair", "--cache-dir", str(tmp_path), "--eval-file", missing]) == 2
    assert "no such file" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Library pieces the demo relies on


def _batch(index: list[int], rows: int, length: int) -> data.Batch:
    ids = np.zeros((rows, length), np.int32)
    valid = np.arange(rows) < len(index)
    return data.Batch(
        ids, ids, ids, np.zeros(rows, np.int32), valid, np.array(index + [-1] * (rows - len(index)))
    )


def test_fit_fractions_counts_each_segment_of_each_batch():
    # test_bucket_fit's worked example through the demo's batches: two batches of 8 that
    # route 1 and 2 of their rows fit (0, 3, 8), not the even (0, 4, 8).
    batches = [_batch(list(range(8)), 8, 16), _batch(list(range(8, 16)), 8, 16)]
    one_two = np.isin(np.arange(16), [3, 9, 12])
    fitted = fit_fractions(one_two, batches, 8, 2, lambda t: [1.0])
    assert bucket_sizes(8, fitted) == (0, 3, 8)
    # A first segment that runs every row (an exit model's first layers) only ever needs
    # the whole batch, which is always there: it leaves the fit where it was.
    both = np.stack([np.ones(16, bool), one_two])
    assert fit_fractions(both, batches, 8, 2, lambda t: [5.0, 1.0]) == fitted
    # Each batch weighs its rows times what one of its rows costs: a long batch that routes
    # one row outweighs a short one that routes four (unweighted, the bucket sits at 4).
    long_short = [_batch(list(range(8)), 8, 64), _batch(list(range(8, 16)), 8, 8)]
    routed = np.isin(np.arange(16), [2, 8, 9, 10, 11])
    by_length = fit_fractions(routed, long_short, 8, 2, lambda t: [t])
    assert by_length == fitted_fractions([1, 4], [8, 8], 8, 2, [8 * 64, 8 * 8])
    assert bucket_sizes(8, by_length) == (0, 2, 8)
    assert bucket_sizes(8, fit_fractions(routed, long_short, 8, 2, lambda t: [1.0])) == (0, 4, 8)
    # Fitted for a binomial spread, (0, 5, 8) would run 5 rows where batches that route
    # exactly 4 run 4 on the even set: the given set stays.
    fours = np.isin(np.arange(16), [0, 1, 2, 3, 8, 9, 10, 11])
    assert bucket_sizes(8, fit_fractions(fours, batches, 8, 2, lambda t: [1.0])) == (0, 5, 8)
    assert fit_fractions(fours, batches, 8, 2, lambda t: [1.0], given=(0, 0.5, 1)) == (0, 0.5, 1)
    assert fit_fractions(one_two, batches, 8, 2, lambda t: [1.0], given=(0, 0.5, 1)) == fitted
    # A padded last batch counts its valid rows only.
    short = [_batch([0, 1, 2], 8, 16)]
    assert fit_fractions(np.array([True, False, True]), short, 8, 1, lambda t: [1.0]) == (0, 1)
    with pytest.raises(ValueError, match=r"row_cost gave \(1,\) costs for 2 segments"):
        fit_fractions(both, batches, 8, 2, lambda t: [1.0])


def test_time_against_reference_counts_and_ratios():
    calls = []

    def fn(name, cost):
        def run(_batch):
            calls.append(name)
            return np.zeros(()) + sum(range(cost))

        return run

    ticks = []
    out = time_against_reference(
        fn("ref", 200_000), {"a": fn("a", 10), "b": fn("b", 10)}, [0, 1], 2, progress=ticks.append
    )
    assert len(ticks) == reference_passes(2, 2)
    assert calls[:6] == ["ref", "ref", "a", "a", "b", "b"]  # one warm-up pass each
    # Round 0 starts with the reference, round 1 with the next function (rotation).
    assert calls[6:] == ["ref"] * 2 + ["a"] * 2 + ["b"] * 2 + ["a"] * 2 + ["b"] * 2 + ["ref"] * 2
    assert set(out) == {"a", "b"} and all(t.speedup > 1 for t in out.values())
    assert len(out["a"].rounds) == 2


def _old_sentence_holdout(texts, holdout, seed=0, min_words=3):
    # The original implementation, a scan of the whole corpus per candidate.
    import collections

    n = len(texts)
    corpus = "\n".join(texts)
    copies = collections.Counter(texts)
    held, seen = [], set()
    for i in np.random.default_rng(seed).permutation(n):
        text = texts[i]
        if text in seen or len(text.split()) < min_words:
            continue
        if corpus.count(text) == copies[text]:
            held.append(int(i))
            seen.add(text)
            if len(held) == holdout:
                break
    if len(held) < holdout:
        raise ValueError("too few")
    held_corpus = "\n".join(texts[i] for i in held)
    train = [i for i in range(n) if i not in set(held) and texts[i] not in held_corpus]
    return np.asarray(train, np.int64), np.sort(np.asarray(held, np.int64))


def test_sentence_holdout_matches_the_original():
    texts = data.read_glue("sst2", "train").text_a[:3000]
    for holdout, seed in ((50, 0), (200, 3)):
        new = data.sentence_holdout(texts, holdout, seed)
        old = _old_sentence_holdout(texts, holdout, seed)
        for a, b in zip(new, old, strict=True):
            np.testing.assert_array_equal(a, b)
    # Substrings that cut words (inner words still whole), duplicates, trailing spaces.
    rng = np.random.default_rng(0)
    words = ["a", "ab", "b", "ba", "abc", "c"]
    for trial in range(40):
        texts = [
            " ".join(rng.choice(words, rng.integers(1, 7))) + (" " if rng.random() < 0.5 else "")
            for _ in range(60)
        ]
        for min_words in (1, 3):
            try:
                old = _old_sentence_holdout(texts, 3, trial, min_words)
            except ValueError:
                with pytest.raises(ValueError):
                    data.sentence_holdout(texts, 3, trial, min_words)
                continue
            new = data.sentence_holdout(texts, 3, trial, min_words)
            for a, b in zip(new, old, strict=True):
                np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# End to end on tiny models


@pytest.fixture
def fast_compile():
    # Compiling dominates a run on tiny models; XLA's optimisations buy nothing there.
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def test_tiny_end_to_end(tokenizer_dir, tmp_path, fast_compile):
    config = DemoConfig.tiny(tokenizer_dir, cache_dir=str(tmp_path / "cache"))
    eval_file = tmp_path / "mine.tsv"
    eval_file.write_text("sentence\tlabel\n" + "a fine film \t1\na dull mess \t0\n" * 6)
    lines: list[str] = []
    result = run_demo(config, out_dir=tmp_path / "out", eval_file=eval_file, echo=lines.append)
    names = [r["method"] for r in result.rows]
    assert names[:2] == ["Super", "Swift"]
    kinds = {r["kind"] for r in result.rows}
    assert kinds == {"reference", "cascade", "exits", "pruning", "moe", "composed"}
    by_name = {r["method"]: r for r in result.rows}
    assert by_name["Super"]["flop_speedup"] == 1.0 and by_name["Super"]["measured_speedup"] == 1.0
    assert by_name["Swift"]["flop_speedup"] > 1.5
    for r in result.rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["flop_speedup"] > 0
        assert r["measured_speedup"] > 0
        assert all(0.0 <= v <= 1.0 for v in r["skipped"].values())
        if r["kind"] != "reference":
            cal = r["calibration"]
            assert {"setting", "accuracy", "reference_accuracy", "target_met"} <= set(cal)
    # The cascades', exits' and composed rows' buckets, fitted to the calibration split:
    # as many sizes as configured (0 and the whole batch included), printed.
    printed = "\n".join(lines).splitlines()
    for r in result.rows:
        if r["kind"] in ("cascade", "exits", "composed"):
            n = config.cascade.buckets if r["kind"] == "cascade" else config.exits.exit_buckets
            sizes = bucket_sizes(config.eval.batch_size, r["calibration"]["bucket_fractions"])
            assert sizes[0] == 0 and sizes[-1] == config.eval.batch_size
            assert len(set(sizes) - {0}) <= n, (r["method"], sizes)
            assert f"  {r['method']}: {sizes}" in printed
    moe_row = next(r for r in result.rows if r["kind"] == "moe")
    assert moe_row["skipped"] == {"experts": 0.5}
    assert result.eval_rows is not None and len(result.eval_rows) == len(result.rows)
    assert result.eval_rows[0]["examples"] == 12
    out = tmp_path / "out"
    for name in ("results.json", "results.csv", "frontier.png", "run.json"):
        assert (out / name).is_file()
    assert (out / "eval_file" / "results.json").is_file()
    assert any("Super" in line and "1.00" in line for line in lines)
    # The MoE row's expert load on dev, per layer: shares of the assignments sum to 1.
    loads = json.loads((out / "run.json").read_text())["diagnostics"][moe_row["method"]]
    assert len(loads) == config.model_config.num_layers
    for load in loads:
        assert load["tokens"] > 0 and sum(load["shares"]) == pytest.approx(1.0)
        assert load["busiest_share"] >= load["mean_share"] == pytest.approx(1 / 4)
    assert any("busiest share" in line for line in lines)
    assert not result.finetune["super"]["cached"]

    # A second run reuses both models and the derived artefacts, and gets the same answers.
    again = run_demo(config, echo=lambda _: None)
    assert again.finetune["super"]["cached"] and again.finetune["swift"]["cached"]
    for a, b in zip(result.rows, again.rows, strict=True):
        assert a["method"] == b["method"] and a["accuracy"] == b["accuracy"]
        assert a["flop_speedup"] == pytest.approx(b["flop_speedup"])


@pytest.mark.slow  # the trainer's own Ctrl-C resume test (test_training.py) runs by default
def test_ctrl_c_during_fine_tuning_resumes_with_the_same_numbers(
    tokenizer_dir, tmp_path, fast_compile, monkeypatch
):
    """Ctrl-C while Super fine-tunes, then the same command again: the run resumes from the
    checkpoint left in the cache and ends with the numbers of a run never interrupted."""
    from elang_jax.training import _finetune

    def config(cache: str) -> DemoConfig:
        return DemoConfig.tiny(tokenizer_dir, cache_dir=str(tmp_path / cache))

    whole = run_demo(config("whole"), echo=lambda _: None)

    real = _finetune._device_batch
    calls = {"n": 0}

    def interrupting(batch):
        calls["n"] += 1
        if calls["n"] == 2:  # Super's second batch: its first step has completed
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(_finetune, "_device_batch", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_demo(config("interrupted"), echo=lambda _: None)
    checkpoints = tmp_path / "interrupted" / "super" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["1"]
    assert not (tmp_path / "interrupted" / "super" / "final").exists()

    monkeypatch.setattr(_finetune, "_device_batch", real)
    resumed = run_demo(config("interrupted"), echo=lambda _: None)
    assert not resumed.finetune["super"]["cached"]  # finished in this run, from step 1
    assert resumed.finetune["super"]["dev_accuracy"] == whole.finetune["super"]["dev_accuracy"]
    for a, b in zip(whole.rows, resumed.rows, strict=True):
        assert a["method"] == b["method"]
        assert a["accuracy"] == b["accuracy"], a["method"]
        assert a["flop_speedup"] == pytest.approx(b["flop_speedup"]), a["method"]
        assert a["calibration"] == b["calibration"], a["method"]
