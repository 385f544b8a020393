"""ACC as the layer-stack runner's token selector (`elang_jax.core.run_stack`)."""

from __future__ import annotations

import dataclasses

from jaxtyping import Array

from elang_jax.core import StackState
from elang_jax.pruning._schedule import AccVariant, KeepSchedule
from elang_jax.pruning._scores import acc_scores, gather_tokens, select_tokens


@dataclasses.dataclass(frozen=True)
class AccSelector:
    """Keeps each layer's static count of tokens, chosen by the previous layer's ACC scores.

    Attributes:
      schedule: the keep schedule (counts per layer and padded length).
    """

    schedule: KeepSchedule

    def counts(self, length: int) -> tuple[int, ...]:
        return self.schedule.counts(length)

    @property
    def wants_values(self) -> bool:
        return self.schedule.config.variant is AccVariant.VALUE_NORM

    def select(self, state: StackState, n: int) -> StackState:
        cfg = self.schedule.config
        columns = select_tokens(
            state.scores, n, state.mask, keep_first=cfg.keep_first, keep_last=cfg.keep_last
        )
        return gather_tokens(state, columns)

    def score(self, probs: Array, values: Array | None, state: StackState) -> Array:
        causal = state.positions if self.schedule.config.causal else None
        return acc_scores(probs, state.mask, values=values, causal_positions=causal)


def selector_of(schedule: KeepSchedule | None) -> AccSelector | None:
    return None if schedule is None else AccSelector(schedule)
