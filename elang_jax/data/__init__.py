"""Data: GLUE and WMT readers, tokenization, static-shape batching, and a TFDS builder.

Typical evaluation pipeline::

    from elang_jax import data

    examples = data.read_glue("rte", "dev")
    tokenizer = data.load_tokenizer("/path/to/tokenizer_dir")
    encoded = data.encode_glue(tokenizer, examples, max_length=128, truncate=True)
    buckets = data.LengthBuckets.powers_of_two(32, 128)
    for batch in data.iterate_batches(encoded, 32, buckets, shuffle=False, sort_by_length=True):
        ...  # batch.input_ids: [32, t] with t in buckets.lengths

The same examples can come through tensorflow-datasets instead of the TSVs::

    train = data.load_glue("rte", "train", data.DataSource.TFDS, data_dir="/tmp/tfds")

The TFDS names (`GlueTfds`, `build_glue_tfds`, and `read_glue_tfds` when called) import
tensorflow-datasets on first use only.
"""

from typing import TYPE_CHECKING, Any

# Static-shape batching.
from elang_jax.data._bucketing import (
    Batch,
    LengthBuckets,
    iterate_batches,
    num_batches,
    restore_order,
)

# GLUE tasks and files.
from elang_jax.data._glue import (
    GLUE_TASKS,
    GlueExamples,
    GlueTask,
    get_glue_task,
    glue_file,
    read_glue,
)

# Where examples come from: the shipped TSVs or the TFDS dataset.
from elang_jax.data._source import DataSource, default_tfds_dir, load_glue, read_glue_tfds

# Held-out calibration splits.
from elang_jax.data._splits import (
    HoldoutKind,
    calibration_split,
    holdout_split,
    select_examples,
    sentence_holdout,
)

# Tokenization.
from elang_jax.data._tokenize import Encoded, encode_glue, load_tokenizer

# WMT test sets.
from elang_jax.data._wmt import WMT_PAIRS, ParallelText, WmtPair, read_wmt

if TYPE_CHECKING:
    # tensorflow-datasets as a TFDS builder; loaded lazily by __getattr__ below.
    from elang_jax.data.glue_tfds import GlueTfds, build_glue_tfds

_LAZY_TFDS = ("GlueTfds", "build_glue_tfds")


def __getattr__(name: str) -> Any:
    # The TFDS builder pulls in tensorflow-datasets; import it only when asked for, so that
    # `import elang_jax.data` stays light for the common TSV path.
    if name in _LAZY_TFDS:
        from elang_jax.data import glue_tfds

        return getattr(glue_tfds, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    # GLUE
    "GLUE_TASKS",
    "GlueExamples",
    "GlueTask",
    "get_glue_task",
    "glue_file",
    "read_glue",
    # Sources
    "DataSource",
    "default_tfds_dir",
    "load_glue",
    "read_glue_tfds",
    # Splits
    "HoldoutKind",
    "calibration_split",
    "holdout_split",
    "sentence_holdout",
    "select_examples",
    # WMT
    "WMT_PAIRS",
    "ParallelText",
    "WmtPair",
    "read_wmt",
    # Tokenization
    "Encoded",
    "encode_glue",
    "load_tokenizer",
    # Batching
    "Batch",
    "LengthBuckets",
    "iterate_batches",
    "num_batches",
    "restore_order",
    # TFDS (lazy)
    "GlueTfds",
    "build_glue_tfds",
]
