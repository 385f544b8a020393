"""GLUE task definitions and a strict TSV reader for the shipped (or a user's) GLUE files.

The shipped files live in `elang_jax/data/files/glue/<task>/<split>.tsv` and are described in
`files/PROVENANCE.md`. They are the original GLUE TSVs, so any file in the same format (for
example a user's own evaluation set) reads the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import TextIO

import numpy as np

SPLITS = ("train", "dev", "test")
METRICS = ("accuracy", "f1")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlueTask:
    """How one GLUE task's TSV files are laid out and scored.

    Attributes:
      name: task name as used in the registry and on disk (`"sst2"`).
      text_columns: header names of the text column(s): one for single-sentence tasks, two for
        sentence-pair tasks, in the order the model sees them.
      label_column: header name of the label column (absent in the unlabeled test files).
      label_names: human-readable class names; label id `i` is `label_names[i]`.
      label_map: raw label string in the file -> label id.
      metrics: metric names to report, in order (`"accuracy"`, and `"f1"` for MRPC).
      splits: splits shipped with the package.
    """

    name: str
    text_columns: tuple[str, ...]
    label_column: str
    label_names: tuple[str, ...]
    label_map: Mapping[str, int]
    metrics: tuple[str, ...]
    splits: tuple[str, ...]

    def __post_init__(self):
        if len(self.text_columns) not in (1, 2):
            raise ValueError(f"text_columns must hold 1 or 2 names, got {self.text_columns=}")
        if self.label_column in self.text_columns:
            raise ValueError(f"{self.label_column=} is also a text column")
        if len(self.label_names) < 2:
            raise ValueError(f"a task needs at least 2 label names, got {self.label_names=}")
        ids = sorted(set(self.label_map.values()))
        if ids != list(range(len(self.label_names))):
            raise ValueError(
                f"label_map must map onto every id 0..{len(self.label_names) - 1}, "
                f"got {dict(self.label_map)=}"
            )
        unknown = [m for m in self.metrics if m not in METRICS]
        if not self.metrics or unknown:
            raise ValueError(
                f"metrics must be a non-empty subset of {METRICS}, got {self.metrics=}"
            )
        bad_splits = [s for s in self.splits if s not in SPLITS]
        if bad_splits:
            raise ValueError(f"splits must be a subset of {SPLITS}, got {self.splits=}")
        # A read-only view, so that the frozen dataclass is frozen all the way down.
        object.__setattr__(self, "label_map", MappingProxyType(dict(self.label_map)))

    @property
    def is_pair(self) -> bool:
        """Whether examples are sentence pairs (two text columns)."""
        return len(self.text_columns) == 2

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)


GLUE_TASKS: Mapping[str, GlueTask] = MappingProxyType(
    {
        "sst2": GlueTask(
            name="sst2",
            text_columns=("sentence",),
            label_column="label",
            label_names=("negative", "positive"),
            label_map={"0": 0, "1": 1},
            metrics=("accuracy",),
            splits=("train", "dev", "test"),
        ),
        "mrpc": GlueTask(
            name="mrpc",
            text_columns=("#1 String", "#2 String"),
            label_column="Quality",
            label_names=("not_equivalent", "equivalent"),
            label_map={"0": 0, "1": 1},
            metrics=("accuracy", "f1"),
            splits=("train", "dev", "test"),
        ),
        # RTE and QNLI store labels as strings; ids follow GLUE (entailment=0).
        "rte": GlueTask(
            name="rte",
            text_columns=("sentence1", "sentence2"),
            label_column="label",
            label_names=("entailment", "not_entailment"),
            label_map={"entailment": 0, "not_entailment": 1},
            metrics=("accuracy",),
            splits=("train", "dev", "test"),
        ),
        # The QNLI train split (~28 MB) is not shipped; see files/PROVENANCE.md.
        "qnli": GlueTask(
            name="qnli",
            text_columns=("question", "sentence"),
            label_column="label",
            label_names=("entailment", "not_entailment"),
            label_map={"entailment": 0, "not_entailment": 1},
            metrics=("accuracy",),
            splits=("dev", "test"),
        ),
    }
)


@dataclasses.dataclass(frozen=True)
class GlueExamples:
    """Examples of one GLUE split, in file order.

    Attributes:
      text_a: first (or only) sentence of each example.
      text_b: second sentence of each example for pair tasks, else None.
      labels: [n] int32 label ids, or None for an unlabeled (test) file.
    """

    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray | None

    def __post_init__(self):
        n = len(self.text_a)
        if self.text_b is not None and len(self.text_b) != n:
            raise ValueError(f"text_b has {len(self.text_b)} entries but text_a has {n}")
        if self.labels is not None:
            if self.labels.dtype != np.int32 or self.labels.shape != (n,):
                raise ValueError(
                    f"labels must be int32 of shape ({n},), got {self.labels.dtype} "
                    f"{self.labels.shape}"
                )

    def __len__(self) -> int:
        return len(self.text_a)


def get_glue_task(task: str) -> GlueTask:
    """Returns the registered `GlueTask` called `task`, with a clear error if there is none."""
    try:
        return GLUE_TASKS[task]
    except KeyError:
        raise ValueError(
            f"unknown GLUE task {task!r}; valid tasks: {', '.join(GLUE_TASKS)}"
        ) from None


def glue_file(task: str, split: str) -> Traversable:
    """Returns the shipped TSV of `task`/`split` as an `importlib.resources` Traversable.

    Args:
      task: a key of `GLUE_TASKS`.
      split: one of the task's shipped splits (`"train"`, `"dev"`, `"test"`).

    Raises:
      ValueError: for an unknown task, or a split the package does not ship.
    """
    spec = get_glue_task(task)
    _check_split(split)
    if split not in spec.splits:
        raise ValueError(
            f"GLUE task {task!r} ships no {split!r} split; shipped splits: "
            f"{', '.join(spec.splits)}. Pass path= to read a file of your own."
        )
    return resources.files("elang_jax.data") / "files" / "glue" / task / f"{split}.tsv"


def read_glue(task: str, split: str, path: str | os.PathLike[str] | None = None) -> GlueExamples:
    """Reads one GLUE split, either the shipped file or a user's TSV in the same format.

    The file must be tab-separated with a header row naming the task's columns (extra columns
    are ignored, so the GLUE `index`/ID columns may be present). Fields are read verbatim:
    GLUE sentences hold unbalanced `"`, so quoting is off (`csv.QUOTE_NONE`). A UTF-8 byte-order
    mark (present in the MRPC files) is dropped. Blank lines are skipped.

    Args:
      task: a key of `GLUE_TASKS` (`"sst2"`, `"mrpc"`, `"rte"`, `"qnli"`).
      split: `"train"`, `"dev"` or `"test"`. Train and dev files must have the label column;
        test files may omit it (then `labels` is None).
      path: a TSV of your own; None reads the shipped file of `task`/`split`.

    Returns:
      The examples in file order.

    Raises:
      ValueError: unknown task or split, missing columns, a line with the wrong number of
        fields, or label strings the task does not know.
    """
    spec = get_glue_task(task)
    _check_split(split)
    if path is None:
        # typeshed's Traversable.open omits `newline`, which implementations pass on to
        # io.TextIOWrapper (pathlib, zipfile); csv needs newline="".
        f_open = glue_file(task, split).open
        with f_open("r", encoding="utf-8-sig", newline="") as f:  # pyright: ignore[reportCallIssue]
            return _parse(spec, split, f, source=f"shipped {task}/{split}.tsv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GLUE {task} {split} file not found: {os.fspath(path)!r}")
    with open(path, encoding="utf-8-sig", newline="") as f:
        return _parse(spec, split, f, source=os.fspath(path))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown GLUE split {split!r}; valid splits: {', '.join(SPLITS)}")


def _parse(spec: GlueTask, split: str, f: TextIO, *, source: str) -> GlueExamples:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{source}: the file is empty (expected a header row)")
    missing = [c for c in spec.text_columns if c not in header]
    has_labels = spec.label_column in header
    if not has_labels and split != "test":
        missing.append(spec.label_column)
    if missing:
        raise ValueError(
            f"{source}: missing column(s) {missing} for GLUE task {spec.name!r} ({split}); "
            f"header has {header}"
        )
    text_idx = [header.index(c) for c in spec.text_columns]
    label_idx = header.index(spec.label_column) if has_labels else None

    columns: list[list[str]] = [[] for _ in text_idx]
    raw_labels: list[str] = []
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            # With QUOTE_NONE a record never spans lines, so line_num is the physical line.
            raise ValueError(
                f"{source}, line {reader.line_num}: expected {len(header)} tab-separated fields "
                f"(as in the header), got {len(row)}"
            )
        for col, i in zip(columns, text_idx, strict=True):
            col.append(row[i])
        if label_idx is not None:
            raw_labels.append(row[label_idx])

    labels = None
    if label_idx is not None:
        unknown = sorted(set(raw_labels) - set(spec.label_map))
        if unknown:
            raise ValueError(
                f"{source}: unknown label string(s) {unknown[:10]} in column "
                f"{spec.label_column!r}; GLUE task {spec.name!r} expects {list(spec.label_map)}"
            )
        labels = np.fromiter((spec.label_map[s] for s in raw_labels), np.int32, len(raw_labels))
    return GlueExamples(
        text_a=columns[0], text_b=columns[1] if spec.is_pair else None, labels=labels
    )
