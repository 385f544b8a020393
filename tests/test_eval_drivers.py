"""The eval/ scripts: thin drivers over `elang_jax.benchmarks`; each parses its command
line, and the library pieces they call work on tiny inputs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from elang_jax import benchmarks as B

EVAL = Path(__file__).resolve().parents[1] / "eval"
SCRIPTS = sorted(p.name for p in EVAL.glob("*.py"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"eval_{name[:-3]}", EVAL / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_parses_its_command_line(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_scripts_are_thin():
    # Argument parsing and a call: no script times anything or writes JSON by hand.
    for name in SCRIPTS:
        text = (EVAL / name).read_text()
        for word in ("perf_counter", "json.dump", "block_until_ready", "time_interleaved"):
            assert word not in text, f"eval/{name} uses {word}"


def test_bench_moe_with_a_given_ffn_and_tokens(tmp_path):
    config = B.BenchConfig.tiny(moe_impls=("dense", "capacity"))
    ffn = B.random_ffn(16, 32, seed=1)
    tokens = B.random_tokens(24, 16, seed=2)
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        r = B.bench_moe(config, ffn=ffn, tokens=tokens)
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)
    assert r.args["tokens"] == 24 and r.args["d_model"] == 16 and r.args["d_ff"] == 32
    assert r.args["given"] == "ffn,tokens"
    assert [c.name for c in r.candidates] == ["dense_ffn", "moe_dense", "moe_capacity"]
    path = B.write_json([r], tmp_path / "moe.json", config)
    assert json.loads(path.read_text())["results"][0]["name"] == "moe"
    with pytest.raises(ValueError, match="not divisible"):
        B.bench_moe(config.replace(moe_experts=3), ffn=ffn)
    with pytest.raises(ValueError, match="tokens must be"):
        B.bench_moe(config, ffn=ffn, tokens=np.zeros((4, 8)))


def test_eval_configs_validate():
    with pytest.raises(ValueError, match="repeats"):
        B.AccEvalConfig(model_dir="x", repeats=0)
    assert B.AccEvalConfig(model_dir="x", targets=(2,)).targets == (2.0,)
    with pytest.raises(ValueError, match="rates"):
        B.Gpt2PrefillConfig(rates=())
    with pytest.raises(ValueError, match="batch_size"):
        B.CascadeEvalConfig(super_dir="a", swift_dir="b", batch_size=0)
    with pytest.raises(ValueError, match="pooling"):
        B.ExitsEvalConfig(model="m", pooling="max")
    with pytest.raises(ValueError, match="layers"):
        B.CalmEvalConfig(layers=0)


def test_tables():
    cascades = dict(
        args=B.CascadeEvalConfig(super_dir="a", swift_dir="b"),
        dev_examples=10,
        device="cpu:0",
        rows=[
            dict(
                method="Super alone",
                accuracy=0.9,
                to_super=1.0,
                flop_speedup=1.0,
                measured_speedup=1.0,
            ),
            dict(
                method="E-LANG energy",
                accuracy=0.89,
                to_super=0.5,
                flop_speedup=1.5,
                measured_speedup=1.4,
                measured_over_flop=1.4 / 1.5,
            ),
        ],
    )
    table = B.format_cascades(cascades)
    assert "E-LANG energy" in table and " 0.93" in table
    calm = dict(
        args=B.CalmEvalConfig(),
        rows=[
            dict(model="gpt2", measure="state", threshold=math.inf, mean_layers=6.0, identical=1.0)
        ],
    )
    assert "inf" in B.format_calm(calm)
    prefill = dict(
        model="m",
        gpt2_prefill=[
            dict(rate=1.0, ms=2.0, predicted_speedup=1.0, measured_speedup=1.0, counts=(4, 4))
        ],
    )
    assert "(4, 4)" in B.format_gpt2_prefill(prefill)
