"""GLUE (SST-2, MRPC, RTE, QNLI) as a tensorflow-datasets builder, built from the shipped TSVs.

The examples come from `read_glue`, so every split is identical, row for row and in the same
order, to what the TSV reader returns (record `i` is row `i`, and `idx` is `i`). Files are
written as ArrayRecord: that format, and random access through `as_data_source()`, work without
TensorFlow (`tfds.load` and TFRecord need it, and are not used). Build and read::

    from elang_jax.data import build_glue_tfds

    builder = build_glue_tfds("rte", "/tmp/tfds")
    dev = builder.as_data_source()["validation"]
    dev[0]  # {'idx': 0, 'label': 1, 'sentence1': b'Dana Reeve, ...', 'sentence2': b'...'}

Once built, the same data reads back by name (import this package first, so that tfds knows
the builder)::

    import elang_jax.data.glue_tfds  # registers "glue_tfds"
    import tensorflow_datasets as tfds

    dev = tfds.data_source("glue_tfds/rte", split="validation", data_dir="/tmp/tfds")

Text features come back as UTF-8 `bytes`; the label is -1 on the unlabeled test splits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from elang_jax.data._glue import GLUE_TASKS, get_glue_task, read_glue

# Feature names of each task's text columns, as TFDS's own `glue` dataset names them.
FEATURE_NAMES = MappingProxyType(
    {
        "sst2": ("sentence",),
        "mrpc": ("sentence1", "sentence2"),
        "rte": ("sentence1", "sentence2"),
        "qnli": ("question", "sentence"),
    }
)

# TFDS split name -> GLUE file split name.
_SPLIT_FILES = MappingProxyType({"train": "train", "validation": "dev", "test": "test"})


class GlueTfds(tfds.core.GeneratorBasedBuilder):
    """GLUE tasks built from the TSV files shipped in `elang_jax/data/files/glue`.

    One config per task (`sst2`, `mrpc`, `rte`, `qnli`). Splits `train` (not for QNLI, whose
    train file is not shipped), `validation` (the GLUE dev file) and `test` (unlabeled).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "SST-2, MRPC, RTE, QNLI from the shipped GLUE TSVs."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=name, description=f"GLUE {name} from the shipped TSVs")
        for name in GLUE_TASKS
    ]

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds' default finds this file through the `importlib_resources` backport, which is not
        # a dependency of tensorflow-datasets (ModuleNotFoundError without it). The file is known.
        return epath.Path(__file__)

    @property
    def _task(self) -> str:
        """The GLUE task of this builder's config (tfds always sets one: BUILDER_CONFIGS)."""
        assert self.builder_config is not None
        return self.builder_config.name

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo is built directly: dataset_info_from_configs() looks for metadata files
        # next to the builder module, which this package does not carry.
        spec = get_glue_task(self._task)
        features: dict[str, tfds.features.FeatureConnector] = {
            name: tfds.features.Text() for name in FEATURE_NAMES[spec.name]
        }
        features["label"] = tfds.features.ClassLabel(names=list(spec.label_names))
        features["idx"] = tfds.features.Scalar(dtype=np.int32)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"GLUE {spec.name} (elang_jax shipped files; see PROVENANCE.md).",
            features=tfds.features.FeaturesDict(features),
            supervised_keys=None,
            # Keep file order: record i of a split is row i of the TSV (tfds would otherwise
            # shuffle records by key hash when writing).
            disable_shuffling=True,
            homepage="https://gluebenchmark.com/",
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[tuple[int, dict]]]:
        del dl_manager  # Nothing to download: the files ship with the package.
        spec = get_glue_task(self._task)
        return {
            tfds_split: self._generate_examples(split=file_split)
            for tfds_split, file_split in _SPLIT_FILES.items()
            if file_split in spec.splits
        }

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
        task = self._task
        names = FEATURE_NAMES[task]
        examples = read_glue(task, split)
        texts = (
            (examples.text_a,) if examples.text_b is None else (examples.text_a, examples.text_b)
        )
        for i in range(len(examples)):
            example: dict[str, Any] = {name: col[i] for name, col in zip(names, texts, strict=True)}
            # -1 marks an unlabeled example, as in TFDS's own GLUE test splits.
            example["label"] = -1 if examples.labels is None else int(examples.labels[i])
            example["idx"] = i
            yield i, example


def build_glue_tfds(task: str, data_dir: str | os.PathLike[str]) -> GlueTfds:
    """Builds (once) and returns the `glue_tfds/<task>` dataset under `data_dir`.

    A dataset already prepared in `data_dir` is reused. Nothing is downloaded: the build reads
    the shipped TSVs and never contacts Google Cloud Storage.

    Args:
      task: a GLUE task (`"sst2"`, `"mrpc"`, `"rte"`, `"qnli"`).
      data_dir: the TFDS data directory to write to.

    Returns:
      The prepared builder; read it with `builder.as_data_source()[split]`.
    """
    get_glue_task(task)  # A clear error for an unknown task, before tfds reports its own.
    builder = GlueTfds(config=task, data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare(
        # try_download_gcs would look the dataset up on GCS over the network first.
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder
