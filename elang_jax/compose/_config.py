"""One configuration for a composed system: cascade tiers, early exit, MoE FFNs, ACC pruning.

A tier's config nests each method's own config (`TierConfig` for the cascade decision,
`MultiExitConfig` for early exit, `AccConfig` and a rate for token pruning, `MoEConfig` for
the experts): a method's settings are declared once, in its own package.
"""

from __future__ import annotations

import dataclasses
import enum
import math

from elang_jax.cascade import TierConfig
from elang_jax.exits import ExitPolicy, MultiExitConfig
from elang_jax.moe import MoEConfig
from elang_jax.pruning import AccConfig
from elang_jax.routing import Score


def _fractions(name: str, fractions: tuple[float, ...]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {f}")
    return fractions


# Buckets (fractions of a tier's rows) the examples still running are packed into after
# each exit: coarser than `MultiExitConfig`'s default, because a composed tier also packs
# the escalated rows, and every bucket is one more branch to compile.
COMPOSED_EXIT_BUCKETS = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)


class Packing(enum.StrEnum):
    """How a composed step packs the rows a later tier runs on.

    NESTED: the escalated rows are packed into a cascade bucket
      (`ComposedConfig.cascade_bucket_fractions`), and inside a tier that exits early the
      rows still running after each exit into its exit buckets, fractions of that bucket.
      The compactions multiply: the tier's every segment is compiled once per cascade
      bucket, so both sets of buckets must stay coarse, and rows are rounded up twice.
    PER_SEGMENT: a later tier that exits early gets the whole batch with its escalated
      rows marked, and packs every segment between exits (the first one included) into
      its exit buckets, fractions of the batch: one compaction per segment, branches that
      add up instead of multiplying, so the exit buckets can be fine. Tiers without exits
      are packed into a cascade bucket as under NESTED. Escalated rows are not rebalanced
      over data shards for such tiers (`serving_step(rebalance=True)` refuses).
    """

    NESTED = "nested"
    PER_SEGMENT = "per_segment"


def _typed(tier: str, name: str, value, kind: type) -> None:
    if value is not None and not isinstance(value, kind):
        raise TypeError(
            f"tier {tier!r}: {name} must be a {kind.__name__} or None, got {type(value).__name__}"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComposedTierConfig:
    """One tier of a composed system and the methods it runs with.

    Attributes:
      route: the cascade decision on this tier's answer (`elang_jax.cascade.TierConfig`):
        its name labels reports; keep the answer when its score >= its threshold, else
        escalate. The last tier always answers. (`batch_size`, the offline path's, is not
        used: a composed system runs as one compiled step.)
      exits: None: no early exit inside the tier. Otherwise the tier's module is an
        `elang_jax.exits.MultiExit` and each example leaves at the first exit that satisfies
        this config's policy, threshold and patience; the examples still running are packed
        into its `bucket_fractions` of the tier's rows. The exit layers, pooling and mixing
        are the module's own (trained with it): `exit_layers`, when set, must match them.
      acc_rate: None: every token runs every layer. Otherwise ACC token pruning with
        `KeepSchedule.from_speed(acc_rate, ...)`; rate in (0, 1], 1 keeps every token.
      acc: how ACC scores and protects tokens (None: `AccConfig.bert()`); used with
        `acc_rate`.
      moe: None: the FFNs run as they are. Otherwise the tier's model has MoE FFNs
        (`elang_jax.moe.moefy`) with `moe.num_experts` experts, and the serving step runs
        them with `moe.top_k` experts per token through `moe.impl`; the routers and gates
        are the model's own.
    """

    route: TierConfig
    exits: MultiExitConfig | None = None
    acc_rate: float | None = None
    acc: AccConfig | None = None
    moe: MoEConfig | None = None

    def __post_init__(self):
        if not isinstance(self.route, TierConfig):
            raise TypeError(f"route must be a TierConfig, got {type(self.route).__name__}")
        _typed(self.name, "exits", self.exits, MultiExitConfig)
        _typed(self.name, "acc", self.acc, AccConfig)
        _typed(self.name, "moe", self.moe, MoEConfig)
        if self.acc_rate is not None and not 0.0 < self.acc_rate <= 1.0:
            raise ValueError(
                f"tier {self.name!r}: acc_rate must lie in (0, 1], got {self.acc_rate}"
            )
        if self.acc is not None and self.acc_rate is None:
            raise ValueError(
                f"tier {self.name!r}: acc is set but acc_rate is None (no pruning); give the "
                "rate, or leave acc out"
            )

    @classmethod
    def make(
        cls,
        name: str,
        *,
        score: Score | str = Score.ENERGY,
        threshold: float = math.inf,
        temperature: float = 1.0,
        exit_policy: ExitPolicy | str | None = None,
        exit_threshold: float = math.inf,
        exit_patience: int = 2,
        exit_buckets: tuple[float, ...] = COMPOSED_EXIT_BUCKETS,
        acc_rate: float | None = None,
        acc: AccConfig | None = None,
        moe: MoEConfig | None = None,
    ) -> ComposedTierConfig:
        """A tier from the settings one usually changes; the nested configs get the rest of
        their defaults. Errors name the tier."""
        # The exit settings are checked even without a policy, so a typo never waits for
        # the day exits are switched on.
        try:
            exits = MultiExitConfig(
                policy=ExitPolicy.ENTROPY if exit_policy is None else exit_policy,  # pyright: ignore[reportArgumentType]
                threshold=exit_threshold,
                patience=exit_patience,
                bucket_fractions=exit_buckets,
            )
        except ValueError as e:
            # MultiExitConfig's messages start with its field name; ours are exit_<field>.
            raise ValueError(f"tier {name!r}: exit_{e}") from None
        if exit_policy is None:
            exits = None
        route = TierConfig(name=name, score=score, threshold=threshold, temperature=temperature)
        return cls(route=route, exits=exits, acc_rate=acc_rate, acc=acc, moe=moe)

    @property
    def name(self) -> str:
        return self.route.name

    @property
    def threshold(self) -> float:
        """The cascade threshold (`route.threshold`)."""
        return self.route.threshold

    @property
    def exit_policy(self) -> ExitPolicy | None:
        return None if self.exits is None else ExitPolicy(self.exits.policy)

    @property
    def exit_threshold(self) -> float:
        """The exit threshold; +inf (never early) for a tier without exits."""
        return math.inf if self.exits is None else self.exits.threshold

    @property
    def exit_buckets(self) -> tuple[float, ...]:
        return COMPOSED_EXIT_BUCKETS if self.exits is None else self.exits.bucket_fractions

    @property
    def acc_config(self) -> AccConfig:
        return self.acc or AccConfig.bert()

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this tier runs with, for labels: "exits", "acc", "moe"."""
        used = []
        if self.moe is not None:
            used.append("moe")
        if self.acc_rate is not None and self.acc_rate < 1.0:
            used.append("acc")
        if self.exits is not None:
            used.append("exits")
        return tuple(used)

    def with_thresholds(
        self, threshold: float | None = None, exit_threshold: float | None = None
    ) -> ComposedTierConfig:
        """The same tier with a new cascade threshold and/or exit threshold (None keeps)."""
        tier = self
        if threshold is not None:
            tier = dataclasses.replace(
                tier, route=dataclasses.replace(tier.route, threshold=threshold)
            )
        if exit_threshold is not None and tier.exits is not None:
            exits = dataclasses.replace(tier.exits, threshold=exit_threshold)
            tier = dataclasses.replace(tier, exits=exits)
        return tier

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
      packing: how later tiers that exit early are packed (`Packing`).
    """

    tiers: tuple[ComposedTierConfig, ...]
    cascade_bucket_fractions: tuple[float, ...] = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)
    packing: Packing | str = Packing.NESTED

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
        if self.packing not in set(Packing):
            raise ValueError(
                f"unknown packing {self.packing!r}; valid: {[p.value for p in Packing]}"
            )
        object.__setattr__(self, "packing", Packing(self.packing))
        object.__setattr__(
            self,
            "cascade_bucket_fractions",
            _fractions("cascade_bucket_fractions", self.cascade_bucket_fractions),
        )

    def replace(self, **kw) -> ComposedConfig:
        return dataclasses.replace(self, **kw)

    def packs_own(self, k: int) -> bool:
        """Whether tier k packs its own rows, segment by segment (`Packing.PER_SEGMENT`)."""
        return k > 0 and self.packing is Packing.PER_SEGMENT and self.tiers[k].exits is not None

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
        cls,
        exit_threshold: float,
        acc_rate: float,
        name: str = "super",
        exit_buckets: tuple[float, ...] = COMPOSED_EXIT_BUCKETS,
        **kw,
    ) -> ComposedConfig:
        """One model that both exits early (entropy) and prunes tokens (ACC)."""
        tier = ComposedTierConfig.make(
            name,
            exit_policy=ExitPolicy.ENTROPY,
            exit_threshold=exit_threshold,
            exit_buckets=exit_buckets,
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
        moe: MoEConfig,
        exit_buckets: tuple[float, ...] = COMPOSED_EXIT_BUCKETS,
        **kw,
    ) -> ComposedConfig:
        """Every method at once: an E-LANG energy router whose Swift model exits early, in
        front of a Super model that is MoEfied, token-pruned and exits early."""
        swift = ComposedTierConfig.make(
            "swift",
            score=Score.ENERGY,
            threshold=threshold,
            exit_policy=ExitPolicy.ENTROPY,
            exit_threshold=swift_exit_threshold,
            exit_buckets=exit_buckets,
        )
        super_ = ComposedTierConfig.make(
            "super",
            exit_policy=ExitPolicy.ENTROPY,
            exit_threshold=super_exit_threshold,
            exit_buckets=exit_buckets,
            acc_rate=acc_rate,
            moe=moe,
        )
        return cls(tiers=(swift, super_), **kw)

    @classmethod
    def tiny(cls, **kw) -> ComposedConfig:
        """For tests: two tiers (the second exits early and prunes), coarse buckets."""
        coarse = (0.0, 0.5, 1.0)
        return cls(
            tiers=(
                ComposedTierConfig.make("swift", threshold=-0.5),
                ComposedTierConfig.make(
                    "super",
                    exit_policy=ExitPolicy.ENTROPY,
                    exit_threshold=-0.6,
                    exit_buckets=coarse,
                    acc_rate=0.7,
                ),
            ),
            **{"cascade_bucket_fractions": coarse, **kw},
        )
