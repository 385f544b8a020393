"""What the speed suite runs: one frozen, validated dataclass and its presets (full, quick, tiny).

Every benchmark times a method's mechanism against its dense baseline on random weights and
random tokens: wall-clock under `jit` depends on shapes and on the routing decisions, not on
what the weights have learned, so no fine-tuning is needed. Routing thresholds are set from
score quantiles on the timed batch, so the share of inputs, layers or tokens skipped is the
one asked for.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from elang_jax.models import BertConfig

# The benchmarks, in the order a run goes through them.
BENCHMARK_NAMES = (
    "backbone",
    "compaction",
    "cascade",
    "exits",
    "moe",
    "acc",
    "compose",
    "speculative",
)
# Backbone shapes the suite knows. "minilm": all-MiniLM-L6-v2 (d 384, 12 heads, d_ff 1536);
# "tiny": a few-kilobyte encoder for tests.
MODELS = ("minilm", "tiny")
# Where the encoders' weights come from. "auto": all-MiniLM-L6-v2 (its first layers for
# shallower models) when it is already in the cache, random otherwise; "pretrained": the
# cached checkpoint or an error. Never downloads. The MoE benchmark's FFN is always random.
WEIGHTS = ("random", "auto", "pretrained")
# `elang_jax.moe.MoEImpl` values, spelled out so that validating a config imports no MoE code.
MOE_IMPLS = ("dense", "ragged", "capacity", "pallas", "tiled")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """Shapes, candidates and timing of one suite run.

    Attributes:
      model: backbone shapes, one of `MODELS`.
      weights: the encoders' weights, one of `WEIGHTS`; timings do not depend on them,
        but routing on real weights is closer to what a fine-tuned model does.
      batch_size: b, rows of every timed batch (MoE excepted: see `moe_tokens`).
      seq_len: t, padded length of every timed batch.
      num_layers: layers of the full model (Super, the multi-exit and ACC backbones).
      rounds: timing rounds; each round runs every candidate once, interleaved, after one
        compile/warm-up call each. Median and min over rounds are reported.
      seed: weights, tokens and routing.
      compaction_layers: the costly function of the compaction benchmark: the top this many
        layers of the encoder.
      compaction_fractions: shares of the batch routed to the costly function; the buckets
        are exactly these shares, so the ideal speed-up is 1 / share (0: the empty bucket).
      swift_layers: layers of the cascade's Swift model (Super has `num_layers`).
      escalate_fractions: shares of the batch the cascade sends to Super.
      exit_depths: target mean layers per example of the multi-exit step.
      exit_bucket_fractions: static bucket sizes (shares of the batch) of the exit step.
      moe_tokens: n, tokens of the MoE benchmark's [n d] input.
      moe_experts: E, experts of the MoE FFN (the FFN width must divide by it).
      moe_active: share of experts run per token (k = round(active E), at least 1).
      moe_impls: `MoEImpl` values to time; "pallas" is skipped on CPU unless
        `pallas_on_cpu` (interpret mode there is a correctness path, not a speed path).
      pallas_on_cpu: time the Pallas MoE in interpret mode on CPU anyway.
      moe_capacity_factor: also time the CAPACITY implementation with this capacity factor
        (it drops overflow); None: dropless implementations only.
      acc_speedups: predicted FLOP speed-ups of the ACC keep schedules timed.
      matmul_size: side of the square float32 matmul whose rate the backbone benchmark
        reports as the device's roofline; 0 skips it.
    """

    model: str = "minilm"
    weights: str = "random"
    batch_size: int = 64
    seq_len: int = 64
    num_layers: int = 6
    rounds: int = 10
    seed: int = 0
    compaction_layers: int = 4
    compaction_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    swift_layers: int = 2
    escalate_fractions: tuple[float, ...] = (0.25, 0.5)
    exit_depths: tuple[float, ...] = (2.0, 3.0, 4.0)
    exit_bucket_fractions: tuple[float, ...] = tuple(i / 16 for i in range(17))
    moe_tokens: int = 4096
    moe_experts: int = 8
    moe_active: float = 0.25
    moe_impls: tuple[str, ...] = MOE_IMPLS
    pallas_on_cpu: bool = False
    moe_capacity_factor: float | None = None
    acc_speedups: tuple[float, ...] = (1.5, 2.0)
    matmul_size: int = 2048

    def __post_init__(self):
        for name in ("compaction_fractions", "escalate_fractions", "exit_depths"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        for name in ("exit_bucket_fractions", "acc_speedups"):
            object.__setattr__(self, name, tuple(float(x) for x in getattr(self, name)))
        object.__setattr__(self, "moe_impls", tuple(str(x) for x in self.moe_impls))
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {self.weights!r}")
        for name in ("batch_size", "seq_len", "num_layers", "rounds", "moe_tokens", "moe_experts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if self.matmul_size < 0:
            raise ValueError(f"matmul_size must be >= 0, got {self.matmul_size}")
        if self.weights != "random" and (self.model != "minilm" or self.num_layers > 6):
            raise ValueError(
                f"weights={self.weights!r} loads all-MiniLM-L6-v2: it needs model='minilm' and "
                f"num_layers <= 6, got model={self.model!r} num_layers={self.num_layers}"
            )
        limit = self.encoder_config().max_length
        if self.seq_len > limit:
            raise ValueError(f"seq_len {self.seq_len} exceeds the model's {limit} positions")
        if not 1 <= self.compaction_layers <= self.num_layers:
            raise ValueError(
                f"compaction_layers must lie in [1, num_layers={self.num_layers}], "
                f"got {self.compaction_layers}"
            )
        if not 1 <= self.swift_layers < self.num_layers:
            raise ValueError(
                f"swift_layers must lie in [1, num_layers={self.num_layers}), "
                f"got {self.swift_layers}"
            )
        for name in ("compaction_fractions", "escalate_fractions", "exit_bucket_fractions"):
            for f in getattr(self, name):
                if not 0.0 <= f <= 1.0:
                    raise ValueError(f"{name} must lie in [0, 1], got {f}")
        for depth in self.exit_depths:
            if not 1.0 <= depth <= self.num_layers:
                raise ValueError(
                    f"exit_depths must lie in [1, num_layers={self.num_layers}], got {depth}"
                )
        if not 0.0 < self.moe_active <= 1.0:
            raise ValueError(f"moe_active must lie in (0, 1], got {self.moe_active}")
        d_ff = self.encoder_config().intermediate_size
        if d_ff % self.moe_experts:
            raise ValueError(f"the FFN width {d_ff} is not divisible by {self.moe_experts} experts")
        cf = self.moe_capacity_factor
        if cf is not None and not (cf > 0 and math.isfinite(cf)):
            raise ValueError(f"moe_capacity_factor must be positive or None, got {cf}")
        for impl in self.moe_impls:
            if impl not in MOE_IMPLS:
                raise ValueError(f"moe_impls must be drawn from {MOE_IMPLS}, got {impl!r}")
        for s in self.acc_speedups:
            if not (s >= 1.0 and math.isfinite(s)):
                raise ValueError(f"acc_speedups must be finite and >= 1, got {s}")

    def replace(self, **kw: Any) -> BenchConfig:
        return dataclasses.replace(self, **kw)

    def encoder_config(self, num_layers: int | None = None) -> BertConfig:
        """The backbone's `BertConfig` with `num_layers` layers (default: the full model's).

        Dropout rates are irrelevant here: every forward runs without `rngs`.
        """
        n = self.num_layers if num_layers is None else num_layers
        if self.model == "tiny":
            # d_ff 64 (not the tiny preset's 37) so that the MoE FFN splits into experts.
            return BertConfig.tiny(num_layers=n, intermediate_size=64)
        return BertConfig.minilm_l6(num_layers=n)

    @property
    def moe_top_k(self) -> int:
        """k, experts run per token."""
        return max(1, round(self.moe_active * self.moe_experts))

    # Presets -------------------------------------------------------------------------------

    @classmethod
    def full(cls, **kw: Any) -> BenchConfig:
        """MiniLM-L6 shapes at batch 64 x 64 tokens, 4,096 MoE tokens, 10 rounds."""
        return cls(**kw)

    @classmethod
    def quick(cls, **kw: Any) -> BenchConfig:
        """A smoke run of the same candidates at smaller shapes: 1-2 minutes on 2 CPU cores.

        Compilation dominates at these shapes, so the exit step gets 5 buckets instead of 17
        (every bucket of every segment compiles).
        """
        base: dict[str, Any] = dict(
            batch_size=32,
            seq_len=32,
            rounds=3,
            moe_tokens=1024,
            exit_bucket_fractions=(0.0, 0.25, 0.5, 0.75, 1.0),
            matmul_size=1024,
        )
        return cls(**{**base, **kw})

    @classmethod
    def tiny(cls, **kw: Any) -> BenchConfig:
        """For tests: a few-kilobyte 3-layer encoder, batch 8 x 16 tokens, one round.

        Three layers, not six: compile time grows with layers times buckets, and it is
        nearly all of a tiny run's time.
        """
        base: dict[str, Any] = dict(
            model="tiny",
            batch_size=8,
            seq_len=16,
            num_layers=3,
            rounds=1,
            compaction_layers=2,
            swift_layers=1,
            moe_tokens=64,
            moe_experts=4,
            exit_depths=(2.0,),
            exit_bucket_fractions=(0.0, 0.25, 0.5, 1.0),
            matmul_size=64,
        )
        return cls(**{**base, **kw})
