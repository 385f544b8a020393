"""`from_pretrained` / `save_pretrained`: Hugging Face directories <-> NNX models."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from elang_jax.hf import _io
from elang_jax.hf._registry import family_and_head_for_model, family_for_model_type
from elang_jax.hf._rules import export_from, load_into

log = logging.getLogger(__name__)


def from_pretrained(
    path_or_name: str | os.PathLike,
    head: str | None = None,
    *,
    num_labels: int | None = None,
    dtype: Any = None,
    seed: int = 0,
    mesh: Mesh | None = None,
    rules: Any = None,
    **config_overrides: Any,
) -> nnx.Module:
    """Loads a Hugging Face checkpoint as the matching NNX model.

    Args:
      path_or_name: a local directory with config.json and model.safetensors (or
        pytorch_model.bin when torch is installed), or a hub name (needs the network).
      head: "base", "sequence_classification", "masked_lm", "seq2seq_lm" or "causal_lm".
        Defaults to the head of `config.architectures`. Naming a head the checkpoint lacks
        (e.g. a classifier on a bare encoder) initialises that head's weights from `seed`.
      num_labels: overrides the number of classes of a classification head.
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
      mesh: load straight into this mesh (`elang_jax.sharding.make_mesh`): the model is
        built abstractly and each tensor goes to its shard only (`elang_jax.sharding`'s
        rules place every parameter). None: one device, as usual.
      rules: the logical-axis rules for `mesh` (default `sharding.LOGICAL_AXIS_RULES`).
      **config_overrides: other fields of the family's config (e.g. hidden_dropout=0.0).
        Overriding the layer count with fewer layers than the checkpoint keeps its first
        layers (e.g. a 2-layer Swift model from a 6-layer checkpoint).

    Raises:
      CheckpointMismatchError: missing, unexpected or mis-shaped tensors, all listed.
    """
    path = _io.resolve(path_or_name)
    hf_config = _io.read_config(path)
    model_type = hf_config.get("model_type")
    if model_type is None:
        raise ValueError(f"{path / _io.CONFIG} has no 'model_type'")
    family = family_for_model_type(model_type)
    archs = hf_config.get("architectures") or []
    checkpoint_head = next(
        (family.architectures[a] for a in archs if a in family.architectures), None
    )
    if head is None:
        if checkpoint_head is None:
            raise ValueError(
                f"cannot tell the head from architectures={archs}; pass head= one of "
                f"{sorted(family.heads)}"
            )
        head = checkpoint_head
    if head not in family.heads:
        raise ValueError(
            f"unknown head {head!r} for {family.name}; choose from {sorted(family.heads)}"
        )

    try:
        config = family.config_from_hf(hf_config)
    except KeyError as e:
        raise ValueError(f"{path / _io.CONFIG} lacks the field {e} that {family.name} needs") from e
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path / _io.CONFIG} does not describe a {family.name} model: {e}") from e
    overrides = dict(config_overrides)
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    if dtype is not None:
        overrides["dtype"] = dtype
    if overrides:
        config = dataclasses.replace(config, **overrides)

    def build() -> nnx.Module:
        return family.heads[head](config, rngs=nnx.Rngs(seed))

    loader = None
    if mesh is None:
        model = build()
    else:
        from elang_jax.sharding._load import ShardedLoader
        from elang_jax.sharding._rules import LOGICAL_AXIS_RULES

        loader = ShardedLoader(build, mesh, LOGICAL_AXIS_RULES if rules is None else rules)
        model = loader.model
    ruleset = family.rules(model.config, head, checkpoint_head)  # type: ignore[attr-defined]
    ignore = list(ruleset.ignore)
    if overrides and family.dropped_layers is not None:
        ignore += family.dropped_layers(hf_config, config)
    report = load_into(
        model,
        _io.read_tensors(path),
        ruleset.rules,
        aliases=ruleset.aliases,
        ignore=ignore,
        source=str(path),
        place=None if loader is None else loader.place,
    )
    if loader is not None:
        model = loader.finish()
    if report.initialised:
        log.warning(
            "%s: initialised %d tensors absent from the checkpoint (new %s head): %s",
            path,
            len(report.initialised),
            head,
            ", ".join(report.initialised),
        )
    return model


def save_pretrained(model: nnx.Module, path: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Writes `model` as a Hugging Face directory (config.json + model.safetensors) that
    transformers' `from_pretrained` loads. Optionally saves a tokenizer beside it."""
    path = Path(path)
    family, head = family_and_head_for_model(model)
    config = model.config  # type: ignore[attr-defined]
    architecture = family.export_architecture(config, head)
    ruleset = family.rules(config, head, None)
    tensors = export_from(model, ruleset.rules)
    path.mkdir(parents=True, exist_ok=True)
    family.config_to_hf(config, architecture).save_pretrained(str(path))
    _io.write_tensors(path, tensors)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path
