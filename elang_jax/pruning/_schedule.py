"""The ACC method config and the static keep schedule chosen from one speed knob.

A schedule gives, for a padded length t, the number of tokens that enter each layer as Python
ints, so every (length bucket, speed) pair compiles exactly one program. Counts depend on t and
the knob only, never on the data.

Worked example, 6 layers, t = 32, `Profile.GEOMETRIC`, rate 0.5, `first_pruned_layer=1`,
`min_tokens=2`: layer 0 sees all 32 tokens and scores them; layer 1 keeps ceil(32 * 0.5) = 16,
layer 2 keeps 8, then 4, 2, and the floor holds the last layer at 2:
counts = (32, 16, 8, 4, 2, 2). With `Profile.LINEAR` and rate 0.25 the kept fraction falls in
equal steps from 1 at layer 0 to 0.25 at the last layer: (32, 28, 23, 18, 13, 8).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import numbers
from collections.abc import Iterable


class AccVariant(enum.StrEnum):
    """How the Attention Context Contribution of a token is measured (see `acc_scores`)."""

    # Attention mass the token receives from the real queries, averaged over heads.
    ATTENTION = "attention"
    # The same mass, each probability weighted by the L2 norm of the token's value vector in
    # that head: the size of the token's term a_ij * v_j in query i's context vector.
    VALUE_NORM = "value_norm"


class Profile(enum.StrEnum):
    """How the kept fraction shrinks with depth (the "word-vector elimination profile")."""

    # Each pruning layer keeps `rate` of the previous layer's share: f_j = rate ** j.
    GEOMETRIC = "geometric"
    # The share falls in equal steps to `rate` at the last layer: f_j = 1 - (1 - rate) j / J.
    LINEAR = "linear"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AccConfig:
    """How ACC token pruning scores, protects and drops tokens.

    Attributes:
      variant: the ACC definition (`AccVariant`).
      profile: the elimination profile turning the speed knob into per-layer counts.
      keep_first: leading columns always kept ([CLS] for BERT-family classifiers).
      keep_last: trailing columns always kept (the last prompt token of a left-padded GPT-2
        prompt, whose logits give the first generated token).
      causal: normalise each key's received mass by the number of real queries that can see
        it (decoders; without it early tokens win just by being visible to more queries).
      min_tokens: no layer keeps fewer tokens than this (nor more than the padded length).
      first_pruned_layer: layers before it see every token; the first selection uses the
        attention of layer `first_pruned_layer - 1`.
    """

    variant: AccVariant | str = AccVariant.ATTENTION  # strings are converted to the enums
    profile: Profile | str = Profile.GEOMETRIC
    keep_first: int = 1
    keep_last: int = 0
    causal: bool = False
    min_tokens: int = 2
    first_pruned_layer: int = 1

    def __post_init__(self):
        for name, enum_type in (("variant", AccVariant), ("profile", Profile)):
            try:
                object.__setattr__(self, name, enum_type(getattr(self, name)))
            except ValueError:
                raise ValueError(
                    f"{name} must be one of {[v.value for v in enum_type]}, "
                    f"got {getattr(self, name)!r}"
                ) from None
        if self.keep_first < 0 or self.keep_last < 0:
            raise ValueError(f"keep_first and keep_last must be >= 0, got {self.keep_first=}")
        if self.min_tokens < max(1, self.keep_first + self.keep_last):
            raise ValueError(
                f"min_tokens must be >= max(1, keep_first + keep_last) so that the protected "
                f"tokens always fit, got {self.min_tokens=} {self.keep_first=} {self.keep_last=}"
            )
        if self.first_pruned_layer < 1:
            raise ValueError(
                f"first_pruned_layer must be >= 1 (selection needs a layer's attention), got "
                f"{self.first_pruned_layer=}"
            )

    def replace(self, **kw) -> AccConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def bert(cls, **kw) -> AccConfig:
        """BERT-family classifiers: [CLS] always kept."""
        return cls(**{"keep_first": 1, **kw})

    @classmethod
    def gpt2(cls, **kw) -> AccConfig:
        """GPT-2 prefill (left-padded prompts): the last prompt token kept, causal normalisation."""
        return cls(**{"keep_first": 0, "keep_last": 1, "causal": True, **kw})

    @classmethod
    def t5(cls, **kw) -> AccConfig:
        """T5 encoder: nothing protected, the decoder cross-attends to whatever is kept."""
        return cls(**{"keep_first": 0, "min_tokens": 1, **kw})

    @classmethod
    def tiny(cls, **kw) -> AccConfig:
        """For tests on tiny random models: [CLS] kept, a floor of one token."""
        return cls(**{"keep_first": 1, "min_tokens": 1, **kw})


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeepSchedule:
    """Per-layer token counts for every padded length, from one speed knob.

    Hashable: pass it as a static argument to `jax.jit`; one program per (length, schedule).

    Attributes:
      rate: the speed knob in (0, 1]; 1.0 keeps every token (the unpruned model), smaller
        drops more. Its meaning per profile is in `Profile`.
      num_layers: layers of the backbone the schedule is for.
      config: the method config (profile, protected tokens, floor, first pruned layer).
    """

    rate: float
    num_layers: int
    config: AccConfig = dataclasses.field(default_factory=AccConfig)

    def __post_init__(self):
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"rate must lie in (0, 1], got {self.rate=}")
        n = self.num_layers
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            # a float would give a fractional step count in `fraction` and a truncated loop
            raise ValueError(f"num_layers must be a whole number (an int), got {self.num_layers=}")
        object.__setattr__(self, "num_layers", int(n))
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers=}")
        if not isinstance(self.config, AccConfig):
            raise ValueError(f"config must be an AccConfig, got {type(self.config)}")

    @classmethod
    def from_speed(
        cls, rate: float, num_layers: int, config: AccConfig | None = None
    ) -> KeepSchedule:
        """The schedule of speed knob `rate` (1.0: no pruning) under `config`'s profile."""
        return cls(rate=float(rate), num_layers=num_layers, config=config or AccConfig())

    def fraction(self, layer: int) -> float:
        """Share of the padded length that enters `layer`, before rounding and the floor."""
        cfg = self.config
        j = layer - cfg.first_pruned_layer + 1  # pruning steps taken before this layer
        if j <= 0:
            return 1.0
        if cfg.profile is Profile.GEOMETRIC:
            return self.rate**j
        steps = max(self.num_layers - cfg.first_pruned_layer, 1)
        return 1.0 - (1.0 - self.rate) * j / steps

    def counts(self, length: int) -> tuple[int, ...]:
        """Tokens entering each layer for padded length `length`: non-increasing Python ints,
        the first equal to `length`."""
        return _counts(self, int(length))

    def table(self, lengths: Iterable[int]) -> dict[int, tuple[int, ...]]:
        """`counts` for each padded length (e.g. the length buckets)."""
        return {int(t): self.counts(t) for t in lengths}

    @property
    def prunes(self) -> bool:
        return self.rate < 1.0


@functools.cache
def _counts(schedule: KeepSchedule, length: int) -> tuple[int, ...]:
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    floor = min(schedule.config.min_tokens, length)
    out, previous = [], length
    for layer in range(schedule.num_layers):
        # The 1e-9 keeps a share that is an exact multiple (0.5 * 32) from rounding up.
        n = math.ceil(schedule.fraction(layer) * length - 1e-9)
        n = min(previous, max(floor, n))
        out.append(n)
        previous = n
    return tuple(out)
