"""Readers for the shipped WMT news test sets (line-aligned plain text, one sentence a line)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType


@dataclasses.dataclass(frozen=True, kw_only=True)
class WmtPair:
    """One shipped WMT test set.

    Attributes:
      name: registry key, e.g. `"wmt14_en_de"`.
      languages: the two language codes, in the order of the name.
      test_set: file stem of the test set, e.g. `"newstest2014"`.
    """

    name: str
    languages: tuple[str, str]
    test_set: str

    def __post_init__(self):
        if len(self.languages) != 2 or self.languages[0] == self.languages[1]:
            raise ValueError(f"languages must be two distinct codes, got {self.languages=}")


WMT_PAIRS: Mapping[str, WmtPair] = MappingProxyType(
    {
        "wmt14_en_de": WmtPair(name="wmt14_en_de", languages=("en", "de"), test_set="newstest2014"),
        "wmt16_en_ro": WmtPair(name="wmt16_en_ro", languages=("en", "ro"), test_set="newstest2016"),
    }
)


@dataclasses.dataclass(frozen=True)
class ParallelText:
    """Line-aligned source and target sentences.

    Attributes:
      source: source sentences.
      target: reference translations, `target[i]` aligned with `source[i]`.
      src_lang: source language code.
      tgt_lang: target language code.
    """

    source: list[str]
    target: list[str]
    src_lang: str
    tgt_lang: str

    def __post_init__(self):
        if len(self.source) != len(self.target):
            raise ValueError(
                f"source has {len(self.source)} lines but target has {len(self.target)}"
            )

    def __len__(self) -> int:
        return len(self.source)


def read_wmt(
    pair: str,
    *,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    source_file: str | os.PathLike[str] | None = None,
    target_file: str | os.PathLike[str] | None = None,
) -> ParallelText:
    """Reads a WMT test set as source/target sentence lists.

    Args:
      pair: a key of `WMT_PAIRS` (`"wmt14_en_de"`: newstest2014, `"wmt16_en_ro"`: newstest2016).
      src_lang: source language; defaults to the first language of the pair (English), or to
        the language that is not `tgt_lang`.
      tgt_lang: target language; defaults to the language that is not `src_lang`.
      source_file: a file of your own to read instead of the shipped source side.
      target_file: a file of your own to read instead of the shipped target side (give both or
        neither).

    Returns:
      The aligned sentences, in file order.

    Raises:
      ValueError: unknown pair or language, or files whose line counts differ.
    """
    try:
        spec = WMT_PAIRS[pair]
    except KeyError:
        raise ValueError(
            f"unknown WMT pair {pair!r}; valid pairs: {', '.join(WMT_PAIRS)}"
        ) from None
    langs = spec.languages
    for name, lang in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
        if lang is not None and lang not in langs:
            raise ValueError(f"{name}={lang!r} is not a language of {pair}; choose from {langs}")
    if src_lang is None:
        src_lang = langs[0] if tgt_lang != langs[0] else langs[1]
    if tgt_lang is None:
        tgt_lang = langs[1] if src_lang == langs[0] else langs[0]
    if src_lang == tgt_lang:
        raise ValueError(f"src_lang and tgt_lang must differ, both are {src_lang!r}")
    if (source_file is None) != (target_file is None):
        raise ValueError("give both source_file and target_file, or neither")

    if source_file is None or target_file is None:
        root = resources.files("elang_jax.data") / "files" / "wmt" / pair
        src_text = (root / f"{spec.test_set}.{src_lang}").read_bytes().decode("utf-8")
        tgt_text = (root / f"{spec.test_set}.{tgt_lang}").read_bytes().decode("utf-8")
        src_name, tgt_name = f"{spec.test_set}.{src_lang}", f"{spec.test_set}.{tgt_lang}"
    else:
        src_text, tgt_text = _read_text(source_file), _read_text(target_file)
        src_name, tgt_name = os.fspath(source_file), os.fspath(target_file)
    source, target = _lines(src_text), _lines(tgt_text)
    if len(source) != len(target):
        raise ValueError(
            f"{pair}: {src_name} has {len(source)} lines but {tgt_name} has {len(target)}; "
            "the two sides must be line-aligned"
        )
    return ParallelText(source=source, target=target, src_lang=src_lang, tgt_lang=tgt_lang)


def _read_text(path: str | os.PathLike[str]) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"WMT file not found: {os.fspath(path)!r}")
    # Bytes, then decode: text mode would also turn a lone "\r" inside a sentence into a line
    # break and shift every later line.
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def _lines(text: str) -> list[str]:
    # Split on "\n" only: str.splitlines() also splits on U+2028, U+0085 and other characters
    # that can occur inside a sentence, which would break the alignment.
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]
