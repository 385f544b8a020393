"""Where GLUE examples are read from: the shipped TSVs, or the `glue_tfds` TFDS dataset.

Both give the same examples, row for row and in the same order (the TFDS builder is built
from the TSVs), so a training run reads identical data either way. The TFDS path goes through
tensorflow-datasets without TensorFlow: the dataset is built as ArrayRecord into a data
directory on first use, then read with `as_data_source()` (random access, no `tfds.load`).
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

import numpy as np

from elang_jax.data._glue import GlueExamples, get_glue_task

# GLUE file split -> TFDS split name (TFDS calls GLUE's dev split "validation").
_TFDS_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


class DataSource(enum.StrEnum):
    """Where GLUE examples come from.

    TSV: the TSV files shipped in `elang_jax/data/files/glue` (`read_glue`).
    TFDS: the `glue_tfds` tensorflow-datasets dataset (ArrayRecord), built on first use
      (`read_glue_tfds`).
    """

    TSV = "tsv"
    TFDS = "tfds"


def default_tfds_dir() -> Path:
    """The TFDS data directory used when none is given: `<elang_jax cache>/tfds`."""
    from elang_jax.checkpoints import cache_dir

    return cache_dir() / "tfds"


def read_glue_tfds(
    task: str, split: str, data_dir: str | os.PathLike[str] | None = None
) -> GlueExamples:
    """Reads one GLUE split through the `glue_tfds` dataset, building it first if needed.

    Args:
      task: a GLUE task with that split shipped (`"sst2"`, `"mrpc"`, `"rte"`, ...).
      split: `"train"`, `"dev"` or `"test"` (GLUE's names; TFDS's `"validation"` is `"dev"`).
      data_dir: the TFDS data directory; None: `default_tfds_dir()`.

    Returns:
      The examples in file order, equal to `read_glue(task, split)`; `labels` is None for
      the unlabeled test split.
    """
    spec = get_glue_task(task)
    if split not in _TFDS_SPLITS:
        raise ValueError(f"unknown GLUE split {split=}; valid splits: {', '.join(_TFDS_SPLITS)}")
    if split not in spec.splits:
        raise ValueError(f"GLUE task {task!r} ships no {split!r} split to build TFDS from")
    from tensorflow_datasets.core.data_sources.base import BaseDataSource

    from elang_jax.data.glue_tfds import FEATURE_NAMES, build_glue_tfds

    builder = build_glue_tfds(task, default_tfds_dir() if data_dir is None else data_dir)
    # {split name: data source}; tfds types the result as any tree of sources.
    sources = builder.as_data_source()
    assert isinstance(sources, dict), type(sources)
    source = sources[_TFDS_SPLITS[split]]
    assert isinstance(source, BaseDataSource), type(source)
    records = source.__getitems__(range(len(source))) if len(source) else []
    columns = [[r[name].decode("utf-8") for r in records] for name in FEATURE_NAMES[task]]
    labels = np.fromiter((r["label"] for r in records), np.int32, len(records))
    # -1 marks the unlabeled test split (as in TFDS's own GLUE): no labels, as read_glue gives.
    unlabeled = bool(len(labels)) and bool(np.all(labels == -1))
    return GlueExamples(
        text_a=columns[0],
        text_b=columns[1] if spec.is_pair else None,
        labels=None if unlabeled else labels,
    )


def load_glue(
    task: str,
    split: str,
    source: DataSource | str = DataSource.TSV,
    data_dir: str | os.PathLike[str] | None = None,
) -> GlueExamples:
    """One GLUE split from `source` (see `DataSource`); `data_dir` is TFDS's data directory."""
    try:
        source = DataSource(source)
    except ValueError:
        raise ValueError(
            f"source must be one of {[s.value for s in DataSource]}, got {source=}"
        ) from None
    if source is DataSource.TFDS:
        return read_glue_tfds(task, split, data_dir)
    from elang_jax.data._glue import read_glue

    return read_glue(task, split)
