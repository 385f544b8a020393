"""One JSON convention for everything the library writes: results, reports and configs.

`to_jsonable(x)` turns a value into plain JSON data (dict, list, str, int, float, bool,
None); `dumps` and `write_json` write it as strict JSON. The rules, applied recursively:

- a dataclass instance becomes a dict of its fields; a mapping a dict whose keys are
  strings (an enum key by its value);
- an enum becomes its value; a path its string;
- a tuple, list or set becomes a list (a set sorted, so that the text is reproducible);
- a NumPy or JAX array becomes nested lists, and a NumPy or JAX scalar a Python scalar;
- a non-finite float becomes the string "inf", "-inf" or "nan": strict JSON has no such
  numbers, `null` would lose the sign of an infinite threshold (+inf never exits, -inf
  always does), and Python's `float()` reads the strings back.

Anything else raises `TypeError`: writing `str(x)` for an unknown object would make a file
that no reader can interpret.

`config_json(config, as_strings=...)` describes a config dataclass: nested sections as
nested dicts, but the given model-config types (a `BertConfig` inside a fine-tuning config)
flattened to dicts of strings. A run stores that description and resumes only a
checkpoint whose stored description matches, so its form must not change with this module.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np

__all__ = ["config_json", "dumps", "to_jsonable", "write_json"]


def _float(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _key(k: Any) -> str:
    if isinstance(k, enum.Enum):
        k = k.value
    return k if isinstance(k, str) else str(to_jsonable(k))


def _is_array(x: Any) -> bool:
    # A JAX array (or any array-like with a shape), without importing JAX here.
    return hasattr(x, "__array__") and hasattr(x, "shape")


def to_jsonable(x: Any) -> Any:
    """`x` as plain JSON data, by the rules of the module docstring.

    Raises:
      TypeError: for a value of no known JSON form.
    """
    if isinstance(x, enum.Enum):  # first: a StrEnum is also a str
        return to_jsonable(x.value)
    if x is None or isinstance(x, bool | str):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return _float(float(x))
    if isinstance(x, np.generic):
        return to_jsonable(x.item())
    if isinstance(x, np.ndarray) or _is_array(x):
        return to_jsonable(np.asarray(x).tolist())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: to_jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {_key(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, set | frozenset):
        return sorted((to_jsonable(v) for v in x), key=repr)
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if isinstance(x, PurePath):
        return str(x)
    raise TypeError(f"no JSON form for a {type(x).__qualname__}: {x!r:.80}")


def dumps(x: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """`x` as strict JSON text (`to_jsonable` first; no NaN or Infinity tokens)."""
    return json.dumps(to_jsonable(x), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(
    x: Any, path: str | os.PathLike[str], *, indent: int | None = 2, sort_keys: bool = False
) -> Path:
    """Writes `dumps(x)` and a newline to `path`, creating its directory; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(x, indent=indent, sort_keys=sort_keys) + "\n")
    return path


def config_json(config: Any, *, as_strings: tuple[type, ...] = ()) -> dict[str, Any]:
    """A config dataclass's fields as JSON data, the stored form of a run's config.

    Nested config dataclasses (sections) become nested dicts the same way; an instance of
    one of the `as_strings` types (the model config, `BertConfig`, in fine-tuning configs)
    becomes a dict of its fields as strings; every other value goes through `to_jsonable`.

    Args:
      config: a dataclass instance.
      as_strings: dataclass types stored as dicts of strings (see the module docstring).
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_json needs a dataclass instance, got {type(config).__name__}")
    return {
        f.name: _config_value(getattr(config, f.name), as_strings)
        for f in dataclasses.fields(config)
    }


def _config_value(value: Any, as_strings: tuple[type, ...]) -> Any:
    if as_strings and isinstance(value, as_strings):
        return {k: str(v) for k, v in dataclasses.asdict(value).items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_json(value, as_strings=as_strings)
    if isinstance(value, tuple | list):
        return [_config_value(v, as_strings) for v in value]
    return to_jsonable(value)
