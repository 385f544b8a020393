"""The cascade methods of the pair experiment (`_eval_pair`) and the Swift models they use.

Every method is a two-tier cascade, Swift -> Super, that differs in the Swift's escalation
score, in which fine-tuned Swift it runs, and in the calibration target:

* E-LANG: the energy score (the paper's), and the released code's softmax-logsumexp score;
* TangoBERT: the Swift's max-softmax confidence;
* CascadeBERT: max-softmax confidence of a Swift fine-tuned with (or without) the
  difficulty-aware ranking loss, both on the plain cross-entropy recipe, so that the pair of
  rows isolates DAR;
* each at the accuracy target (at most `epsilon` below Super on the calibration split) and at
  the guarantee target (the same drop bounded with probability 1 - delta, Learn-then-Test).

Shape vocabulary: n examples, c classes.
"""

from __future__ import annotations

import dataclasses

# Swift roles. "swift" is the experiment's Swift (perhaps distilled from Super); "swift_ce"
# the plain cross-entropy recipe CascadeBERT's rows compare against; "swift_dar" that
# recipe plus the difficulty-aware loss.
SWIFT, SWIFT_CE, SWIFT_DAR = "swift", "swift_ce", "swift_dar"
ACCURACY, GUARANTEE = "accuracy", "guarantee"


@dataclasses.dataclass(frozen=True)
class PairMethod:
    """One cascade row.

    Attributes:
      name: the row's name.
      score: the Swift's escalation score (`elang_jax.routing.Score` value).
      swift: the Swift role it runs (`SWIFT`, `SWIFT_CE` or `SWIFT_DAR`).
      target: `ACCURACY` or `GUARANTEE`.
    """

    name: str
    score: str
    swift: str = SWIFT
    target: str = ACCURACY

    def at(self, target: str) -> PairMethod:
        """The same method calibrated for `target` (its name says which, unless accuracy)."""
        name = self.name if target == ACCURACY else f"{self.name} ({target})"
        return dataclasses.replace(self, name=name, target=target)


BASE_METHODS = (
    PairMethod("E-LANG energy", "energy"),
    PairMethod("E-LANG released score", "softmax_lse"),
    PairMethod("TangoBERT max-prob", "max_prob"),
)
CASCADEBERT_METHODS = (
    PairMethod("CascadeBERT without DAR", "max_prob", SWIFT_CE),
    PairMethod("CascadeBERT with DAR", "max_prob", SWIFT_DAR),
)


def pair_targets(*, guarantee: bool) -> tuple[str, ...]:
    """The calibration targets every row is run at: accuracy, then (with `guarantee`) the
    guarantee target."""
    return (ACCURACY, GUARANTEE) if guarantee else (ACCURACY,)


def pair_methods(*, cascadebert: bool, targets: tuple[str, ...]) -> tuple[PairMethod, ...]:
    """The rows to run: the base methods (and CascadeBERT's pair) at each of `targets`
    (`pair_targets`)."""
    base = BASE_METHODS + (CASCADEBERT_METHODS if cascadebert else ())
    return tuple(m.at(t) for t in targets for m in base)


def swift_roles(methods: tuple[PairMethod, ...]) -> tuple[str, ...]:
    """The Swift roles the methods need, in a fixed order."""
    used = {m.swift for m in methods}
    return tuple(r for r in (SWIFT, SWIFT_CE, SWIFT_DAR) if r in used)
