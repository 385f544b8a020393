"""`elang_jax.jsonio`: the one JSON convention (results, reports, configs)."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from elang_jax import jsonio
from elang_jax.models import BertConfig
from elang_jax.training import FinetuneConfig


class Color(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Inner:
    x: float
    color: Color


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    sizes: tuple[int, ...]
    path: Path


def test_to_jsonable_rules():
    value = dict(
        outer=Outer("a", Inner(math.inf, Color.RED), (1, 2), Path("/tmp/x")),
        arrays=[np.arange(3, dtype=np.int32), jnp.array([0.5, -np.inf]), jnp.float32(2.0)],
        scalars=(np.float64(np.nan), np.int64(7), np.bool_(True), Level.HIGH),
        keys={Color.RED: 1, 3: 2, (1, 2): 3},
        bag={3, 1, 2},
    )
    out = jsonio.to_jsonable(value)
    assert out == dict(
        outer=dict(name="a", inner=dict(x="inf", color="red"), sizes=[1, 2], path="/tmp/x"),
        arrays=[[0, 1, 2], [0.5, "-inf"], 2.0],
        scalars=["nan", 7, True, 2],
        keys={"red": 1, "3": 2, "[1, 2]": 3},
        bag=[1, 2, 3],
    )
    # Plain Python types only: no enum, NumPy or JAX value survives.
    assert type(out["outer"]["inner"]["color"]) is str
    assert type(out["scalars"][1]) is int and type(out["scalars"][3]) is int
    # The strings read back as the floats they stand for.
    assert float(out["arrays"][1][1]) == -math.inf


def test_unknown_objects_raise():
    with pytest.raises(TypeError, match="no JSON form"):
        jsonio.to_jsonable({"x": object()})


def test_dumps_is_strict_and_write_json_creates_the_directory(tmp_path):
    text = jsonio.dumps({"a": math.inf, "b": [np.float32(1.5)]}, indent=None)
    assert text == '{"a": "inf", "b": [1.5]}'
    path = jsonio.write_json({"t": (1, math.nan)}, tmp_path / "sub" / "out.json")
    assert path.read_text().endswith("\n")
    assert json.loads(path.read_text()) == {"t": [1, "nan"]}


def test_config_json_keeps_the_stored_form():
    config = FinetuneConfig(task="sst2", model_config=BertConfig.tiny(), tokenizer_dir="tok")
    out = jsonio.config_json(config, as_strings=(BertConfig,))
    # A nested model config is flattened to strings, the form stored with every run.
    assert out["model_config"] == {
        k: str(v) for k, v in dataclasses.asdict(BertConfig.tiny()).items()
    }
    assert out["buckets"] == list(config.buckets) and out["schedule"] == "linear"
    assert out == config.to_json()
    json.dumps(out, allow_nan=False)
    # Without `as_strings` a nested config is a section like any other.
    assert jsonio.config_json(config)["model_config"]["hidden_size"] == 32
    with pytest.raises(TypeError):
        jsonio.config_json({"not": "a dataclass"})


def test_config_json_of_nested_sections():
    from elang_jax.demo import DemoConfig

    config = DemoConfig()
    assert jsonio.config_json(config, as_strings=(BertConfig,)) == config.to_json()
