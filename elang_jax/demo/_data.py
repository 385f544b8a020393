"""The demo's datasets: calibration, training samples, dev, and the user's evaluation file.

The calibration split is the one the models were fine-tuned without (the same holdout the
fine-tuning runs carve out of the training split); dev only reports. Exit heads and MoE
routers train on samples of the remaining training examples, never on either.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from elang_jax import data
from elang_jax.demo._config import DemoConfig, DemoError


@dataclasses.dataclass(frozen=True)
class DemoData:
    """Encoded datasets of one demo run.

    Attributes:
      calib: the held-out calibration examples (thresholds are chosen here).
      dev: the task's dev split (or its first `eval.limit` examples): the reported numbers.
      exit_fit: training examples for the exit heads.
      moe_fit: training examples whose FFN inputs train the MoE routers.
      eval_file: the user's labelled TSV, if one was given.
    """

    calib: data.Encoded
    dev: data.Encoded
    exit_fit: data.Encoded
    moe_fit: data.Encoded
    eval_file: data.Encoded | None = None


def read_eval_file(task: str, path: str | os.PathLike[str]) -> data.GlueExamples:
    """A user's labelled TSV in the task's GLUE dev format, with errors that say what to fix.

    Raises:
      DemoError: no such file, missing columns, malformed lines, unknown labels, no rows.
    """
    spec = data.get_glue_task(task)
    columns = [*spec.text_columns, spec.label_column]
    hint = (
        f"expected a tab-separated file with a header row holding the columns {columns} "
        f"(labels {list(spec.label_map)}), like the GLUE {task} dev.tsv"
    )
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DemoError(f"--eval-file {path!r}: no such file")
    try:
        examples = data.read_glue(task, "dev", path)
    except (ValueError, UnicodeDecodeError) as e:
        raise DemoError(f"--eval-file {path!r}: {e}; {hint}") from None
    if len(examples) == 0:
        raise DemoError(f"--eval-file {path!r} holds no examples; {hint}")
    return examples


def _encode(tokenizer: Any, examples: data.GlueExamples, config: DemoConfig, vocab: int):
    return data.encode_glue(tokenizer, examples, config.max_length, truncate=True, vocab_size=vocab)


def _sample(kept: np.ndarray, n: int, seed: int) -> np.ndarray:
    # Sorted: the sample keeps the file's order.
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(kept)[:n])


def load_data(
    config: DemoConfig,
    tokenizer: Any,
    vocab_size: int,
    eval_examples: data.GlueExamples | None = None,
) -> DemoData:
    """Reads, splits and tokenizes everything the methods need (see `DemoData`)."""
    train = data.read_glue(config.task, "train")
    kept, held = data.calibration_split(
        train,
        config.calibration.holdout,
        config.calibration.holdout_seed,
        config.calibration.holdout_kind,
    )
    dev = data.read_glue(config.task, "dev")
    if config.eval.limit is not None and config.eval.limit < len(dev):
        dev = data.select_examples(dev, np.arange(config.eval.limit))
    return DemoData(
        calib=_encode(tokenizer, data.select_examples(train, held), config, vocab_size),
        dev=_encode(tokenizer, dev, config, vocab_size),
        exit_fit=_encode(
            tokenizer,
            data.select_examples(train, _sample(kept, config.exits.train_examples, config.seed)),
            config,
            vocab_size,
        ),
        moe_fit=_encode(
            tokenizer,
            data.select_examples(train, _sample(kept, config.moe.train_examples, config.seed + 1)),
            config,
            vocab_size,
        ),
        eval_file=None
        if eval_examples is None
        else _encode(tokenizer, eval_examples, config, vocab_size),
    )
