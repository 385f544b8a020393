"""One configuration for a composed system: cascade tiers, early exit, MoE FFNs, ACC pruning."""

from __future__ import annotations

import dataclasses
import math
import numbers

from elang_jax.exits import ExitPolicy
from elang_jax.pruning import AccConfig
from elang_jax.routing import Score, check_temperature


def _fractions(name: str, fractions: tuple[float, ...]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {f}")
    return fractions


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComposedTierConfig:
    """One tier of a composed system and the methods it runs with.

    Attributes:
      name: label used in reports.
      score: the cascade's confidence score on this tier's answer (`elang_jax.routing`).
      threshold: keep this tier's answer when score >= threshold, else escalate to the next
        tier. Ignored for the last tier (it always answers).
      temperature: temperature of `score`, > 0.
      exit_policy: None: no early exit inside the tier. Otherwise the tier's module is an
        `elang_jax.exits.MultiExit` and each example leaves at the first exit that
        satisfies this policy.
      exit_threshold: the exit policy's threshold (+inf never exits early).
      exit_patience: PABEE's patience, >= 1.
      acc_rate: None: every token runs every layer. Otherwise ACC token pruning with
        `KeepSchedule.from_speed(acc_rate, ...)`; rate in (0, 1], 1 keeps every token.
      acc: how tokens are scored and protected (None: `AccConfig.bert()`).
      moe_top_k: None: the FFNs run as they are. Otherwise the tier's model has MoE FFNs
        (`elang_jax.moe.moefy`) and each token runs this many experts.
    """

    name: str
    score: Score = Score.ENERGY
    threshold: float = math.inf
    temperature: float = 1.0
    exit_policy: ExitPolicy | None = None
    exit_threshold: float = math.inf
    exit_patience: int = 2
    acc_rate: float | None = None
    acc: AccConfig | None = None
    moe_top_k: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "score", Score(self.score))
        if self.exit_policy is not None:
            try:
                object.__setattr__(self, "exit_policy", ExitPolicy(self.exit_policy))
            except ValueError:
                valid = [p.value for p in ExitPolicy]
                raise ValueError(
                    f"tier {self.name!r}: exit_policy must be None or one of {valid}, "
                    f"got {self.exit_policy!r}"
                ) from None
        for field in ("threshold", "exit_threshold"):
            if math.isnan(getattr(self, field)):
                raise ValueError(f"tier {self.name!r}: {field} is NaN")
        t = check_temperature(self.temperature, where=f"tier {self.name!r}: ")
        object.__setattr__(self, "temperature", t)
        p = self.exit_patience
        # a fractional patience would be truncated by the exit step's int comparison
        if isinstance(p, bool) or not isinstance(p, numbers.Integral) or p < 1:
            raise ValueError(
                f"tier {self.name!r}: exit_patience must be an int >= 1, got {self.exit_patience!r}"
            )
        object.__setattr__(self, "exit_patience", int(p))
        if self.acc_rate is not None and not 0.0 < self.acc_rate <= 1.0:
            raise ValueError(
                f"tier {self.name!r}: acc_rate must lie in (0, 1], got {self.acc_rate}"
            )
        if self.moe_top_k is not None and self.moe_top_k < 1:
            raise ValueError(f"tier {self.name!r}: moe_top_k must be >= 1, got {self.moe_top_k}")

    @property
    def acc_config(self) -> AccConfig:
        return self.acc or AccConfig.bert()

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this tier runs with, for labels: "exits", "acc", "moe"."""
        used = []
        if self.moe_top_k is not None:
            used.append("moe")
        if self.acc_rate is not None and self.acc_rate < 1.0:
            used.append("acc")
        if self.exit_policy is not None:
            used.append("exits")
        return tuple(used)

    def replace(self, **kw) -> ComposedTierConfig:
        return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComposedConfig:
    """A composed system: tiers cheapest first, each with its own methods.

    With one tier there is no cascade: the tier's methods (exits, pruning, MoE) compose
    inside one model.

    Attributes:
      tiers: one `ComposedTierConfig` per tier.
      cascade_bucket_fractions: static buckets (fractions of the batch) that the examples
        escalated to each later tier are packed into.
      exit_bucket_fractions: static buckets (fractions of the rows a tier runs on) that the
        examples still running are packed into after each exit.
    """

    tiers: tuple[ComposedTierConfig, ...]
    cascade_bucket_fractions: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)
    exit_bucket_fractions: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)

    def __post_init__(self):
        tiers = tuple(self.tiers)
        if not tiers:
            raise ValueError("a composed system needs at least one tier")
        for t in tiers:
            if not isinstance(t, ComposedTierConfig):
                raise TypeError(f"tiers must be ComposedTierConfig, got {type(t).__name__}")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be distinct, got {names}")
        object.__setattr__(self, "tiers", tiers)
        object.__setattr__(
            self,
            "cascade_bucket_fractions",
            _fractions("cascade_bucket_fractions", self.cascade_bucket_fractions),
        )
        object.__setattr__(
            self,
            "exit_bucket_fractions",
            _fractions("exit_bucket_fractions", self.exit_bucket_fractions),
        )

    def replace(self, **kw) -> ComposedConfig:
        return dataclasses.replace(self, **kw)

    def with_tier(self, index: int, **kw) -> ComposedConfig:
        """The same system with tier `index`'s config updated by `kw`."""
        tiers = list(self.tiers)
        tiers[index] = tiers[index].replace(**kw)
        return self.replace(tiers=tuple(tiers))

    @property
    def label(self) -> str:
        """E.g. "swift[exits] -> super[moe+acc+exits]"."""
        return " -> ".join(
            t.name + (f"[{'+'.join(t.methods)}]" if t.methods else "") for t in self.tiers
        )

    # ------------------------------------------------------------------ presets
    @classmethod
    def exits_acc(
        cls, exit_threshold: float, acc_rate: float, name: str = "super", **kw
    ) -> ComposedConfig:
        """One model that both exits early (entropy) and prunes tokens (ACC)."""
        tier = ComposedTierConfig(
            name=name,
            exit_policy=ExitPolicy.ENTROPY,
            exit_threshold=exit_threshold,
            acc_rate=acc_rate,
        )
        return cls(tiers=(tier,), **kw)

    @classmethod
    def elang_full(
        cls,
        threshold: float,
        swift_exit_threshold: float,
        super_exit_threshold: float,
        acc_rate: float,
        moe_top_k: int,
        **kw,
    ) -> ComposedConfig:
        """Every method at once: an E-LANG energy router whose Swift model exits early, in
        front of a Super model that is MoEfied, token-pruned and exits early."""
        swift = ComposedTierConfig(
            name="swift",
            score=Score.ENERGY,
            threshold=threshold,
            exit_policy=ExitPolicy.ENTROPY,
            exit_threshold=swift_exit_threshold,
        )
        super_ = ComposedTierConfig(
            name="super",
            exit_policy=ExitPolicy.ENTROPY,
            exit_threshold=super_exit_threshold,
            acc_rate=acc_rate,
            moe_top_k=moe_top_k,
        )
        return cls(tiers=(swift, super_), **kw)

    @classmethod
    def tiny(cls, **kw) -> ComposedConfig:
        """For tests: two tiers (the second exits early and prunes), coarse buckets."""
        return cls(
            tiers=(
                ComposedTierConfig(name="swift", threshold=-0.5),
                ComposedTierConfig(
                    name="super", exit_policy=ExitPolicy.ENTROPY, exit_threshold=-0.6, acc_rate=0.7
                ),
            ),
            **{
                "cascade_bucket_fractions": (0.0, 0.5, 1.0),
                "exit_bucket_fractions": (0.0, 0.5, 1.0),
                **kw,
            },
        )
