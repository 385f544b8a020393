"""Model families known to the Hugging Face importer/exporter.

Each family module (`_bert_map`, `_mpnet_map`, `_t5_map`, `_gpt2_map`) builds a `Family` and
registers it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from elang_jax.hf._rules import Rule


@dataclasses.dataclass(frozen=True)
class RuleSet:
    """What `load_into` / `export_from` need for one (config, head) pair."""

    rules: list[Rule]
    aliases: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    ignore: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class Family:
    """One architecture family.

    Attributes:
      name: our name ("bert", "t5", "gpt2").
      model_types: Hugging Face `model_type` values this family reads.
      heads: head name ("base", "sequence_classification", ...) -> NNX model class, built as
        `cls(config, rngs=...)`.
      architectures: Hugging Face architecture class name -> head name.
      config_from_hf: config.json dict -> our frozen config.
      config_to_hf: (our config, architecture name) -> a `transformers.PretrainedConfig`.
      export_architecture: (our config, head) -> the HF class name written by save_pretrained.
      rules: (our config, head, checkpoint head or None) -> RuleSet. The checkpoint head is
        the head the checkpoint was saved with; when it differs from `head`, tensors of the
        other head are ignored and this head's tensors may be absent (freshly initialised).
      dropped_layers: (config.json dict, our config) -> fnmatch patterns of the checkpoint's
        layers that a config with fewer layers leaves out (a Swift model built from a
        checkpoint's first layers); only used when the caller overrides the layer count.
    """

    name: str
    model_types: tuple[str, ...]
    heads: dict[str, type]
    architectures: dict[str, str]
    config_from_hf: Callable[[dict], Any]
    config_to_hf: Callable[[Any, str], Any]
    export_architecture: Callable[[Any, str], str]
    rules: Callable[[Any, str, str | None], RuleSet]
    dropped_layers: Callable[[dict, Any], list[str]] | None = None


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    _load_builtin()
    return dict(_FAMILIES)


def family_for_model_type(model_type: str) -> Family:
    for fam in families().values():
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in families().values() for t in f.model_types)
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {known}")


def family_and_head_for_model(model: Any) -> tuple[Family, str]:
    matches = [
        (fam, head)
        for fam in families().values()
        for head, cls in fam.heads.items()
        if type(model) is cls
    ]
    # The BERT-family classes serve two families (BERT/RoBERTa and MPNet): the config's
    # model_type tells them apart.
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for fam, head in matches:
        if model_type in fam.model_types:
            return fam, head
    if matches:
        return matches[0]
    raise TypeError(f"{type(model).__name__} is not a model elang_jax can export")


def _load_builtin() -> None:
    # Imported lazily so that a family's import cost is only paid when checkpoints are used.
    from elang_jax.hf import _bert_map  # noqa: F401

    for mod in ("_mpnet_map", "_t5_map", "_gpt2_map"):
        try:
            __import__(f"elang_jax.hf.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"elang_jax.hf.{mod}":
                raise
