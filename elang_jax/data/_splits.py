"""Held-out calibration splits carved out of a training split.

Thresholds must never be chosen on the split that reports the result, nor on data a model
was fine-tuned on (its confidence there is inflated). `holdout_split` sets aside a fixed,
seeded random subset of a training split: fine-tuning uses the rest, calibration uses it.

SST-2's training split is every labelled phrase of its training sentences, so a random
held-out phrase usually sits inside a sentence that is trained on: the models look far
better on it than on dev (whole, unseen sentences), and thresholds tuned there escalate too
little. `sentence_holdout` holds out whole sentences instead and drops from training every
example that occurs inside one of them. `calibration_split` picks either by `HoldoutKind`.
"""

from __future__ import annotations

import collections
import enum
import functools

import numpy as np

from elang_jax.data._glue import GlueExamples


class HoldoutKind(enum.StrEnum):
    """How a calibration split is carved out of a training split.

    RANDOM: a seeded random subset of examples (`holdout_split`).
    SENTENCES: whole sentences, with every example inside them removed from training
      (`sentence_holdout`); for phrase-level training splits such as SST-2's.
    """

    RANDOM = "random"
    SENTENCES = "sentences"


def holdout_split(n: int, holdout: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices), both sorted, disjoint, covering range(n)."""
    if not 0 <= holdout < n:
        raise ValueError(f"holdout must lie in [0, {n}), got {holdout}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


def select_examples(examples: GlueExamples, indices: np.ndarray) -> GlueExamples:
    """The examples at `indices`, in that order."""
    idx = np.asarray(indices, np.int64)
    return GlueExamples(
        text_a=[examples.text_a[i] for i in idx],
        text_b=None if examples.text_b is None else [examples.text_b[i] for i in idx],
        labels=None if examples.labels is None else examples.labels[idx],
    )


def sentence_holdout(
    texts: list[str], holdout: int, seed: int = 0, min_words: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Held-out whole sentences; training keeps no example that occurs inside one of them.

    A sentence is an example (of at least `min_words` words) that occurs inside no other
    example. `holdout` of them are drawn in a seeded random order; every example whose text
    occurs inside a held-out sentence (its phrases, and any duplicate) leaves the training
    side, so no part of a calibration sentence is ever trained on.

    Results are memoised per process: fine-tuning runs and calibration ask for the same split.

    Returns:
      (train indices, held-out indices), both sorted and disjoint; together they may not
      cover range(n): the removed phrases are in neither.
    """
    if holdout < 1:
        raise ValueError(f"holdout must be >= 1, got {holdout}")
    train, held = _sentence_holdout(tuple(texts), holdout, seed, min_words)
    return train.copy(), held.copy()


class _WordIndex:
    """Which of some texts may contain a given text as a substring, found through words.

    If `text` has three or more words, its inner words (all but the first and last, which
    may match only part of a word) appear as whole whitespace-separated words in any text
    that contains it. So only the texts holding its rarest inner word need a substring test:
    the same answer as scanning every text, without the scan (30 s -> 1 s on SST-2).
    """

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.joined = "\n".join(texts)  # "\n" never occurs in a GLUE text
        self.by_word: dict[str, list[int]] = collections.defaultdict(list)
        for j, text in enumerate(texts):
            for word in set(text.split()):
                self.by_word[word].append(j)

    def inside_longer(self, text: str) -> bool:
        """Whether `text` occurs inside one of the texts that is longer than it."""
        inner = text.split()[1:-1]
        if not inner:
            return any(len(t) > len(text) and text in t for t in self.texts)
        rows = min((self.by_word.get(w, ()) for w in inner), key=len)
        return any(len(self.texts[j]) > len(text) and text in self.texts[j] for j in rows)

    def inside_any(self, text: str) -> bool:
        """Whether `text` occurs inside (or equals) one of the texts."""
        inner = text.split()[1:-1]
        if not inner:
            return text in self.joined
        rows = min((self.by_word.get(w, ()) for w in inner), key=len)
        return any(text in self.texts[j] for j in rows)


@functools.lru_cache(maxsize=4)
def _sentence_holdout(
    texts: tuple[str, ...], holdout: int, seed: int, min_words: int
) -> tuple[np.ndarray, np.ndarray]:
    n = len(texts)
    # A text occurs inside another example only if that example is longer (an example of the
    # same length containing it equals it), so "inside no other example" is "inside no
    # longer distinct text".
    index = _WordIndex(list(dict.fromkeys(texts)))
    held, seen = [], set()
    for i in np.random.default_rng(seed).permutation(n):
        text = texts[i]
        if text in seen or len(text.split()) < min_words:
            continue
        if not index.inside_longer(text):
            held.append(int(i))
            seen.add(text)
            if len(held) == holdout:
                break
    if len(held) < holdout:
        raise ValueError(
            f"only {len(held)} sentences of >= {min_words} words exist, asked for {holdout}"
        )
    held_index = _WordIndex([texts[i] for i in held])
    held_set = set(held)
    train = [i for i in range(n) if i not in held_set and not held_index.inside_any(texts[i])]
    return np.asarray(train, np.int64), np.sort(np.asarray(held, np.int64))


def calibration_split(
    examples: GlueExamples, holdout: int, seed: int = 0, kind: HoldoutKind | str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of a training split, by `kind` (see HoldoutKind)."""
    if kind not in set(HoldoutKind):
        raise ValueError(f"unknown holdout kind {kind!r}; valid: {[k.value for k in HoldoutKind]}")
    kind = HoldoutKind(kind)
    if kind is HoldoutKind.SENTENCES:
        if examples.text_b is not None:
            raise ValueError("sentence holdout needs a single-sentence task (no text_b)")
        return sentence_holdout(examples.text_a, holdout, seed)
    return holdout_split(len(examples), holdout, seed)
