"""Tokenizer loading and GLUE encoding that never truncates without saying so."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from elang_jax.data._glue import GlueExamples


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Token ids of a GLUE split, one unpadded int32 array per example.

    Attributes:
      input_ids: per example, [length] int32 token ids including special tokens.
      token_type_ids: per example, [length] int32 segment ids (0 for the first sentence and its
        special tokens, 1 for the second sentence for BERT-style tokenizers).
      lengths: [n] int32 number of tokens of each example.
      labels: [n] int32 label ids, or None for unlabeled examples.
      max_length: the limit the examples were encoded under.
      num_truncated: how many examples were truncated to `max_length` (0 unless encoded with
        `truncate=True`).
      pad_id: the tokenizer's padding id, used when batches are padded.
    """

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    lengths: np.ndarray
    labels: np.ndarray | None
    max_length: int
    num_truncated: int = 0
    pad_id: int = 0

    def __post_init__(self):
        n = len(self.input_ids)
        if len(self.token_type_ids) != n:
            raise ValueError(f"{len(self.token_type_ids)=} differs from {len(self.input_ids)=}")
        if self.lengths.dtype != np.int32 or self.lengths.shape != (n,):
            raise ValueError(
                f"lengths must be int32 of shape ({n},), got {self.lengths.dtype} "
                f"{self.lengths.shape}"
            )
        if self.labels is not None and (self.labels.dtype != np.int32 or self.labels.shape != (n,)):
            raise ValueError(
                f"labels must be int32 of shape ({n},), got {self.labels.dtype} {self.labels.shape}"
            )
        if n and int(self.lengths.max()) > self.max_length:
            raise ValueError(f"an example has {self.lengths.max()} tokens > {self.max_length=}")
        if not 0 <= self.num_truncated <= n:
            raise ValueError(f"{self.num_truncated=} must lie in [0, {n}]")

    def __len__(self) -> int:
        return len(self.input_ids)

    def select(self, indices: np.ndarray | list[int]) -> Encoded:
        """The examples at `indices`, in that order (e.g. the hard ones a cascade escalates)."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        return dataclasses.replace(
            self,
            input_ids=[self.input_ids[i] for i in idx],
            token_type_ids=[self.token_type_ids[i] for i in idx],
            lengths=self.lengths[idx],
            labels=None if self.labels is None else self.labels[idx],
            num_truncated=0,
        )


def load_tokenizer(path_or_name: str | os.PathLike[str]) -> Any:
    """Loads a Hugging Face tokenizer with `transformers.AutoTokenizer`.

    A local directory (holding `tokenizer.json` or `vocab.txt` plus `tokenizer_config.json`)
    is loaded offline: the hub is never contacted for it. Anything else is passed to the hub as
    a model name.

    Args:
      path_or_name: a local tokenizer directory, or a hub model name.

    Returns:
      The tokenizer (a fast tokenizer when one exists).

    Raises:
      FileNotFoundError: `path_or_name` looks like a path but no such directory exists.
    """
    # Imported here: transformers takes seconds to import and only this function needs it.
    from transformers import AutoTokenizer

    path = os.path.expanduser(os.fspath(path_or_name))
    if os.path.isdir(path):
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    if os.path.exists(path):
        raise FileNotFoundError(f"{path!r} is a file; pass the directory holding the tokenizer")
    # Hub names look like "model" or "org/model"; anything else is a missing local path, and
    # the hub's error for it would be confusing.
    if path.startswith((".", "/")) or path.count("/") > 1 or (os.sep != "/" and os.sep in path):
        raise FileNotFoundError(f"tokenizer directory not found: {path!r}")
    return AutoTokenizer.from_pretrained(path)


def encode_glue(
    tokenizer: Any,
    examples: GlueExamples,
    max_length: int,
    *,
    truncate: bool = False,
    vocab_size: int | None = None,
) -> Encoded:
    """Tokenizes GLUE examples the way the tokenizer pairs sentences.

    Pairs are encoded by the tokenizer itself (`[CLS] a [SEP] b [SEP]` with segment ids 0/1 for
    BERT). Examples are never truncated silently: by default an example longer than
    `max_length` tokens is an error; with `truncate=True` it is truncated by the tokenizer
    (longest sentence first, special tokens kept) and counted in `Encoded.num_truncated`.

    Args:
      tokenizer: a Hugging Face tokenizer (see `load_tokenizer`).
      examples: the examples to encode (`read_glue`).
      max_length: the most tokens an example may have, special tokens included.
      truncate: truncate over-long examples instead of raising.
      vocab_size: the model's vocabulary size to check ids against; defaults to
        `len(tokenizer)` (base vocabulary plus added tokens).

    Returns:
      Unpadded token ids, segment ids, lengths and labels.

    Raises:
      ValueError: examples longer than `max_length` with `truncate=False` (the message gives
        how many and the first index), or token ids outside `[0, vocab_size)`.
    """
    if max_length < 1:
        raise ValueError(f"{max_length=} must be positive")
    n = len(examples)
    if vocab_size is None:
        vocab_size = len(tokenizer)

    ids, types = _tokenize(tokenizer, examples.text_a, examples.text_b, max_length=None)
    lengths = np.fromiter((len(x) for x in ids), np.int32, n)
    too_long = np.flatnonzero(lengths > max_length)
    if too_long.size and not truncate:
        first = int(too_long[0])
        raise ValueError(
            f"{too_long.size} of {n} examples exceed max_length={max_length} tokens (longest "
            f"has {int(lengths.max())}); the first is index {first} with {int(lengths[first])} "
            "tokens. Raise max_length, or pass truncate=True to truncate them (the count is "
            "reported as Encoded.num_truncated)."
        )
    if too_long.size:
        # Re-encode only the long examples, through the tokenizer so that the closing special
        # tokens survive and pairs are shortened longest-sentence-first.
        sel = too_long.tolist()
        text_b = None if examples.text_b is None else [examples.text_b[i] for i in sel]
        short_ids, short_types = _tokenize(
            tokenizer, [examples.text_a[i] for i in sel], text_b, max_length=max_length
        )
        for i, a, t in zip(sel, short_ids, short_types, strict=True):
            ids[i], types[i] = a, t
        lengths = np.fromiter((len(x) for x in ids), np.int32, n)

    input_ids = [np.asarray(x, np.int32) for x in ids]
    token_type_ids = [np.asarray(x, np.int32) for x in types]
    # One vectorized check over all ids; the per-example loop only runs to name the culprit.
    flat = np.concatenate(input_ids) if input_ids else np.zeros(0, np.int32)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= vocab_size):
        i = next(i for i, x in enumerate(input_ids) if ((x < 0) | (x >= vocab_size)).any())
        x = input_ids[i]
        raise ValueError(
            f"example {i} holds token ids outside [0, {vocab_size}): "
            f"{sorted(set(x[(x < 0) | (x >= vocab_size)].tolist()))[:10]}; the tokenizer "
            "does not match the model's vocabulary"
        )
    pad_id = tokenizer.pad_token_id
    return Encoded(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        lengths=lengths,
        labels=examples.labels,
        max_length=max_length,
        num_truncated=int(too_long.size),
        pad_id=0 if pad_id is None else int(pad_id),
    )


def _tokenize(
    tokenizer: Any, text_a: list[str], text_b: list[str] | None, *, max_length: int | None
) -> tuple[list[list[int]], list[list[int]]]:
    if not text_a:
        return [], []
    out = tokenizer(
        text_a,
        text_b,
        truncation=max_length is not None,
        max_length=max_length,
        padding=False,
        return_token_type_ids=True,
        return_attention_mask=False,
    )
    ids = [list(x) for x in out["input_ids"]]
    # Some tokenizers (GPT-2 style) have no segment ids; a single segment is then all zeros.
    types = out.get("token_type_ids")
    types = [list(x) for x in types] if types is not None else [[0] * len(x) for x in ids]
    return ids, types
