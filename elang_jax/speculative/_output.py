"""What speculative decoding returns: tokens plus the counts that say how well it drafted."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jaxtyping import Array, Int

from elang_jax.models._decode import MultiTokenLoopOutput


@dataclasses.dataclass(frozen=True)
class SpeculativeOutput:
    """Generated tokens and per-row drafting counts.

    Attributes:
      tokens: [b n] int32, the prompt not included; pad after a row's EOS.
      lengths: [b] columns a row filled (its EOS included).
      calls: [b] verification calls (full-model passes after the prefill) while the row ran.
      drafted: [b] tokens the draft proposed to the verifier while the row ran (k a call).
      accepted: [b] drafted tokens the verifier confirmed.
      iterations: verification calls of the whole batch (its slowest row).
    """

    tokens: Int[Array, "b n"]
    lengths: Int[Array, " b"]
    calls: Int[Array, " b"]
    drafted: Int[Array, " b"]
    accepted: Int[Array, " b"]
    iterations: Int[Array, ""]

    @classmethod
    def from_loop(cls, out: MultiTokenLoopOutput, k: int) -> SpeculativeOutput:
        """From the loop's output, whose totals hold the per-row accepted counts."""
        return cls(
            tokens=out.tokens,
            lengths=out.lengths,
            calls=out.calls,
            drafted=out.calls * k,
            accepted=out.totals,
            iterations=out.iterations,
        )

    def acceptance_rate(self) -> float:
        """Accepted over drafted tokens, over the whole batch (host-side; 0 if none)."""
        drafted = int(np.sum(np.asarray(self.drafted)))
        return float(np.sum(np.asarray(self.accepted))) / drafted if drafted else 0.0

    def tokens_per_call(self) -> float:
        """Tokens emitted per verification call, over the whole batch (the prefill's first
        token, chosen before any call, not counted); 0 if no call ran."""
        calls = int(np.sum(np.asarray(self.calls)))
        emitted = np.sum(np.maximum(np.asarray(self.lengths) - 1, 0))
        return float(emitted) / calls if calls else 0.0


jax.tree_util.register_dataclass(
    SpeculativeOutput,
    data_fields=["tokens", "lengths", "calls", "drafted", "accepted", "iterations"],
    meta_fields=[],
)
