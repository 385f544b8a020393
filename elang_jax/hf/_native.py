"""elang_jax's own checkpoint format: a JSON description plus an orbax parameter tree.

Layout of a native directory:
  elang_jax.json  {"format": 1, "family": ..., "head": ..., "config": {...}}
  params/         orbax StandardCheckpointer tree of the model's nnx.Param state
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from elang_jax.hf._io import read_json
from elang_jax.hf._registry import families, family_and_head_for_model

NATIVE_FILE = "elang_jax.json"
FORMAT_VERSION = 1


def _config_to_json(config) -> dict:
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif field.name == "dtype" and value is not None:
            value = jnp.dtype(value).name
        out[field.name] = value
    return out


def _config_from_json(cls, fields: dict):
    fields = dict(fields)
    if fields.get("dtype") is not None:
        fields["dtype"] = jnp.dtype(fields["dtype"])
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{NATIVE_FILE} has config fields {cls.__name__} does not know: {unknown}")
    return cls(**fields)


def is_native(path: str | os.PathLike) -> bool:
    return (Path(path) / NATIVE_FILE).exists()


def save_native(model: nnx.Module, path: str | os.PathLike) -> Path:
    path = Path(path).absolute()
    family, head = family_and_head_for_model(model)
    config = model.config  # type: ignore[attr-defined]
    path.mkdir(parents=True, exist_ok=True)
    meta = dict(
        format=FORMAT_VERSION, family=family.name, head=head, config=_config_to_json(config)
    )
    params = nnx.state(model, nnx.Param)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path / "params", params, force=True)
    (path / NATIVE_FILE).write_text(json.dumps(meta, indent=2))
    return path


def load_native(path: str | os.PathLike, seed: int = 0) -> nnx.Module:
    path = Path(path).absolute()
    if not is_native(path):
        raise FileNotFoundError(f"{path} has no {NATIVE_FILE}: not an elang_jax checkpoint")
    file = path / NATIVE_FILE
    meta = read_json(file)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{file}: unsupported format {meta.get('format')}")
    try:
        family = families()[meta["family"]]
        cls = family.heads[meta["head"]]
    except KeyError as e:
        raise ValueError(f"{file}: unknown or missing family/head {e}") from None
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{file} has no 'config' object")
    config = _config_from_json(_config_class(cls), meta["config"])
    model = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(seed)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    with ocp.StandardCheckpointer() as ckpt:
        params = ckpt.restore(path / "params", params)
    if jax.tree.leaves(rest):
        raise NotImplementedError(f"{cls.__name__} has non-parameter state; cannot restore it")
    return nnx.merge(graphdef, params, rest)


def _config_class(model_cls: type) -> type:
    """The config dataclass a model class is built from (its `config` annotation)."""
    annotation = inspect.signature(model_cls.__init__).parameters["config"].annotation
    if isinstance(annotation, str):  # postponed annotations
        annotation = getattr(inspect.getmodule(model_cls), annotation)
    return annotation
