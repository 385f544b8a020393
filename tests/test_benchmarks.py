"""The speed suite (`elang_jax.benchmarks`): every benchmark on tiny shapes, one round, its
result's structure and ratios; the timing loop, the JSON writer and the command line.

Timings here mean nothing (tiny shapes, a shared machine, XLA optimisations off to compile
fast); only structure and finiteness are checked.
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import pytest

from elang_jax import benchmarks as B
from elang_jax.benchmarks import _cli
from elang_jax.benchmarks._result import make_result


@pytest.fixture(scope="module")
def results():
    """Every benchmark once on the tiny preset (compiling is nearly all of the time)."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        out = B.run_benchmarks(B.BenchConfig.tiny())
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    return {r.name: r for r in out}


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.parametrize("name", B.BENCHMARK_NAMES)
def test_result_structure_and_ratios(results, name):
    r = results[name]
    assert r.name == name
    assert r.candidates[0].name == r.baseline
    assert r.candidates[0].speedup == pytest.approx(1.0)
    assert len(r.candidates) >= 2 or name == "backbone"
    assert r.backend == jax.default_backend()
    assert r.jax_version == jax.__version__
    assert r.device and r.args["rounds"] == 1
    names = [c.name for c in r.candidates]
    assert len(set(names)) == len(names)
    for c in r.candidates:
        assert _positive(c.median_ms) and _positive(c.min_ms) and c.min_ms <= c.median_ms
        assert _positive(c.speedup)
        assert c.flop_speedup is None or _positive(c.flop_speedup)
    json.dumps(r.to_dict(), allow_nan=False)


def test_routing_hits_its_targets(results):
    config = B.BenchConfig.tiny()
    cascade = results["cascade"]
    for f in config.escalate_fractions:
        c = cascade.candidate(f"cascade_{100 * f:g}%_to_super")
        assert c.info["escalated"] == pytest.approx(f)
        assert 1.0 < c.flop_speedup < cascade.candidate("swift_alone").flop_speedup
    compaction = results["compaction"]
    empty = compaction.candidate("subset_0%")
    assert empty.info["bucket"] == 0 and empty.flop_speedup is None
    assert compaction.candidate("subset_25%").flop_speedup == pytest.approx(4.0)
    exits = results["exits"]
    (depth,) = config.exit_depths
    assert abs(exits.candidate(f"exit_mean_{depth:g}_layers").info["mean_layers"] - depth) < 0.5
    assert exits.candidate("exit_step_never_early").info["mean_layers"] == config.num_layers
    acc = results["acc"]
    for target in config.acc_speedups:
        assert acc.candidate(f"acc_{target:g}x").flop_speedup >= target
    compose = results["compose"]
    target = config.acc_speedups[0]
    alone = compose.candidate(f"acc_{target:g}x_alone")
    both = compose.candidate(f"exits_{depth:g}_layers+acc_{target:g}x")
    exits_alone = compose.candidate(f"exits_{depth:g}_layers_alone")
    assert abs(both.info["mean_layers"] - depth) < 0.5
    # Composing prunes tokens in the layers the exits leave: cheaper than either alone.
    assert both.flop_speedup > max(alone.flop_speedup, exits_alone.flop_speedup) * 0.95
    moe = results["moe"]
    impls = {"dense_ffn", "moe_dense", "moe_ragged", "moe_capacity", "moe_tiled"}
    assert {c.name for c in moe.candidates} == impls
    assert any("pallas" in n for n in moe.notes) == (jax.default_backend() == "cpu")


def test_tables_and_json(results, tmp_path):
    for r in results.values():
        table = B.format_table(r)
        assert table.startswith(f"== {r.name} ==")
        for c in r.candidates:
            assert c.name in table
    path = tmp_path / "out.json"
    B.write_json(list(results.values()), path, B.BenchConfig.tiny())
    data = json.loads(path.read_text())
    assert data["config"]["model"] == "tiny"
    assert data["environment"]["backend"] == jax.default_backend()
    assert [r["name"] for r in data["results"]] == list(B.BENCHMARK_NAMES)
    empty = next(c for c in data["results"][1]["candidates"] if c["name"] == "subset_0%")
    assert empty["flop_speedup"] is None and empty["delivered"] is None


def test_time_interleaved_rotates_and_summarises():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    out = B.time_interleaved(fns, rounds=3)
    # One warm-up call each, then each round starts one candidate later.
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    for t in out.values():
        assert len(t.samples_ms) == 3 and t.min_ms <= t.median_ms
    calls.clear()
    B.time_interleaved(fns, rounds=1, untimed_before=1)
    assert calls == list("abc") + list("aabbcc")
    with pytest.raises(ValueError, match="rounds"):
        B.time_interleaved(fns, rounds=0)
    with pytest.raises(ValueError, match="no candidates"):
        B.time_interleaved({}, rounds=1)


def test_make_result_ratios():
    timings = {
        "base": B.Timing(median_ms=10.0, min_ms=9.0, samples_ms=(10.0,)),
        "fast": B.Timing(median_ms=4.0, min_ms=3.0, samples_ms=(4.0,)),
    }
    r = make_result("x", timings, "base", {"rounds": 1}, flop_speedups={"fast": math.inf})
    assert r.candidate("fast").speedup == pytest.approx(2.5)
    assert r.candidate("fast").flop_speedup is None
    assert r.candidate("base").delivered == pytest.approx(1.0)
    with pytest.raises(KeyError, match="no candidate"):
        r.candidate("slow")
    with pytest.raises(ValueError, match="baseline"):
        make_result("x", timings, "missing", {})


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(model="huge"), "model"),
        (dict(batch_size=0), "batch_size"),
        (dict(swift_layers=6), "swift_layers"),
        (dict(compaction_fractions=(1.5,)), "compaction_fractions"),
        (dict(exit_depths=(0.5,)), "exit_depths"),
        (dict(moe_experts=7), "divisible"),
        (dict(moe_impls=("magic",)), "moe_impls"),
        (dict(moe_capacity_factor=0.0), "moe_capacity_factor"),
        (dict(acc_speedups=(0.5,)), "acc_speedups"),
        (dict(seq_len=4096), "positions"),
        (dict(model="tiny", weights="pretrained"), "MiniLM"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        B.BenchConfig(**kw)


def test_presets():
    full, quick, tiny = B.BenchConfig.full(), B.BenchConfig.quick(), B.BenchConfig.tiny()
    assert (full.batch_size, full.seq_len, full.moe_tokens) == (64, 64, 4096)
    assert quick.batch_size < full.batch_size and quick.rounds < full.rounds
    assert tiny.model == "tiny" and tiny.moe_top_k == 1
    assert B.BenchConfig.quick(rounds=7).rounds == 7


def test_unknown_benchmark_is_a_clear_error(capsys):
    with pytest.raises(ValueError, match=r"unknown benchmark 'nope'; choose from backbone"):
        B.resolve_names(["cascade", "nope"])
    with pytest.raises(ValueError, match="unknown benchmark"):
        B.run_benchmarks(B.BenchConfig.tiny(), ["nope"])
    assert B.main(["--only", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert B.resolve_names(["acc", "backbone"]) == ("backbone", "acc")


def test_cli_parsing():
    assert _cli.NAMES == B.BENCHMARK_NAMES
    parser = argparse.ArgumentParser(prog="elang-jax")
    B.add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", "--quick", "--rounds", "2", "--only", "moe", "acc"])
    assert args.fn is B.run_bench and args.only == ["moe", "acc"]
    assert args.json == "bench_results.json"
    config = _cli.bench_config(args)
    assert config == B.BenchConfig.quick(rounds=2)
    args = parser.parse_args(
        ["bench", "--moe-impls", "dense", "--pallas-on-cpu", "--seq-len", "32"]
    )
    config = _cli.bench_config(args)
    assert config.moe_impls == ("dense",) and config.pallas_on_cpu and config.seq_len == 32
    assert config.batch_size == B.BenchConfig.full().batch_size


def test_cli_list_and_run(monkeypatch, tmp_path, capsys):
    assert B.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(B.BENCHMARK_NAMES)
    # The full preset swapped for the tiny one: the command's plumbing, not its shapes.
    monkeypatch.setattr(B.BenchConfig, "full", classmethod(lambda cls, **kw: cls.tiny(**kw)))
    path = tmp_path / "bench.json"
    argv = ["--only", "moe", "--json", str(path), "--moe-impls", "capacity"]
    assert B.main([*argv, "--capacity-factor", "1.25"]) == 0
    out = capsys.readouterr().out
    assert "== moe ==" in out and "moe_capacity_cf1.25" in out and f"wrote {path}" in out
    data = json.loads(path.read_text())
    assert [r["name"] for r in data["results"]] == ["moe"]


@pytest.mark.slow
def test_pretrained_weights(minilm_dir):
    """weights="pretrained" reads the cached all-MiniLM-L6-v2, truncated for Swift."""
    from elang_jax.benchmarks._models import build_classifier

    config = B.BenchConfig(weights="pretrained", batch_size=2, seq_len=8, rounds=1, matmul_size=0)
    swift = build_classifier(config, 2)
    assert swift.config.num_layers == 2 and swift.config.hidden_size == 384
    r = B.bench_backbone(config)
    assert r.args["weights"] == "pretrained" and _positive(r.candidates[0].median_ms)
