"""Configuration of a sparse MoE feed-forward layer: enums, one frozen dataclass, presets."""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any


class MoEImpl(enum.StrEnum):
    """How the selected experts are computed. All give the same result (tests check it).

    DENSE: every expert on every token, unselected neurons masked. The readable reference;
      costs as much as the dense FFN.
    RAGGED: sort assignments by expert, `jax.lax.ragged_dot` grouped matmul, gather back.
      Dropless. The grouped-matmul path for accelerators; very slow on XLA CPU (measured).
    CAPACITY: sort assignments by expert into a static [E, C, d] buffer, one matmul per
      expert (`lax.map`), gather back. With `capacity_factor=None` it is dropless: C is the
      smallest static bucket that holds the busiest expert, chosen at run time by `lax.switch`.
      Fast on CPU when the load is balanced; dropless, its cost follows the busiest expert.
    PALLAS: the Pallas dispatch kernel (gather into expert-sorted order), the grouped matmul
      (`ragged_dot`), and the Pallas combine kernel (gated scatter-add back). Dropless.
      Interpret mode on CPU (a correctness path, not a speed path there).
    TILED: every expert's first C0 assignments (0.75x the mean load) in CAPACITY's main
      buffer, the rest sorted by expert and cut into tiles of T rows (`tiled_sizes`), each
      used tile run through its own expert, the spare ones skipped. Dropless and
      batch-invariant; the cost follows each expert's own load, so skew does not hurt: at
      most E C0 + (m - C0) + E (T - 1) rows on any routing (under 2x the active rows).
      The default, the fastest dropless path on XLA CPU (4,096 tokens, d 384, 8 experts of
      192, top-2, against the dense FFN in one run): 2.8x at max/mean load 1.05 (CAPACITY
      2.9x), 2.05x on the routing of the demo's worst layer, 2.30 (CAPACITY 1.15x), 2.6x at
      3.98 (CAPACITY 0.84x). See `elang_jax.moe._tiled`.
    """

    DENSE = "dense"
    RAGGED = "ragged"
    CAPACITY = "capacity"
    PALLAS = "pallas"
    TILED = "tiled"


class RouterKind(enum.StrEnum):
    """How experts are scored for each token.

    ORACLE: the true positive activation mass of each expert (needs the dense activations:
      an upper bound for analysis, saves nothing).
    CENTROID: cosine similarity between the token and each expert's centroid (the mean of its
      L2-normalised input weight rows).
    MLP: MoEfication's router, tanh(x_hat W1) W2 (W1 initialised with the centroids, W2 with
      the identity), trained to predict each expert's share of positive activation.
    LINEAR: a learned linear gate (x W), for models trained or fine-tuned as MoE.
    """

    ORACLE = "oracle"
    CENTROID = "centroid"
    MLP = "mlp"
    LINEAR = "linear"


class GateKind(enum.StrEnum):
    """How the selected experts' outputs are weighted.

    NONE: unweighted sum (MoEfication: with every expert selected it is the dense FFN).
    SOFTMAX: softmax of the router logits over all experts (within each group for expert
      prototyping), taken at the selected experts; optionally renormalised to sum to 1.
    """

    NONE = "none"
    SOFTMAX = "softmax"


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoEConfig:
    """A sparse MoE FFN: E experts, each token runs k of them.

    Attributes:
      num_experts: E, number of experts; d_ff must be divisible by it.
      top_k: k, experts run per token. With `num_groups` G > 1 (expert prototyping) the
        experts form G groups of E/G and each token takes its top k/G in every group.
      impl: the `MoEImpl` that computes the selected experts.
      router: the `RouterKind` that scores experts.
      gate: the `GateKind` that weights the selected experts' outputs.
      num_groups: G, expert-prototyping groups (1: plain top-k).
      renormalize: with SOFTMAX gates, rescale the selected gates to sum to 1 (per group).
      capacity_factor: None: dropless. A number c: each expert takes at most
        C = max(min_capacity, ceil(c * n * k / E)) assignments (at most n) per call; see
        `elang_jax.moe` for the drop rule. Applies to every implementation alike.
      min_capacity: floor on C when `capacity_factor` is set.
      dropless_capacity: the dropless CAPACITY implementation's main buffer, as a multiple
        of the mean load n * k / E: every expert's first C0 assignments run there.
      overflow_chunk: the dropless CAPACITY implementation's overflow pass, as a multiple
        of the mean load: assignments past C0 run in chunks of this many rows per expert, a
        loop that makes no trip at all when no expert is past C0.
      tiled_main: the TILED implementation's main buffer, as a multiple of the mean load:
        every expert's first C0 assignments run there, the rest in tiles. Smaller than
        CAPACITY's: skewed experts' overflow costs little in tiles, and the main buffer's
        empty slots (under-loaded experts) cost as much as used ones.
      tile_rows: the TILED implementation's largest overflow tile, in rows (T: the smaller
        of this and a quarter of the mean load n * k / E, so that the spare rows of the
        experts' last tiles stay under a quarter of the active rows).
      load_balance_weight: weight of the Switch load-balancing loss in `MoEOutput.aux_loss`.
      z_loss_weight: weight of the router z-loss in `MoEOutput.aux_loss`.
      block_rows: row tile of the Pallas kernels.
      interpret: Pallas interpret mode; None: on CPU only.
    """

    num_experts: int
    top_k: int
    impl: MoEImpl | str = MoEImpl.TILED  # strings are converted to the enums
    router: RouterKind | str = RouterKind.MLP
    gate: GateKind | str = GateKind.NONE
    num_groups: int = 1
    renormalize: bool = False
    capacity_factor: float | None = None
    min_capacity: int = 4
    dropless_capacity: float = 1.05
    overflow_chunk: float = 0.5
    tiled_main: float = 0.75
    tile_rows: int = 128
    load_balance_weight: float = 1e-2
    z_loss_weight: float = 1e-3
    block_rows: int = 128
    interpret: bool | None = None

    def __post_init__(self):
        for name, enum_type in (("impl", MoEImpl), ("router", RouterKind), ("gate", GateKind)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum_type(value))
            except ValueError:
                raise ValueError(
                    f"{name} must be one of {[v.value for v in enum_type]}, got {value!r}"
                ) from None
        for name in (
            "num_experts",
            "top_k",
            "num_groups",
            "min_capacity",
            "block_rows",
            "tile_rows",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k must be <= num_experts, got {self.top_k=} {self.num_experts=}")
        if self.num_experts % self.num_groups:
            raise ValueError(
                f"num_groups must divide num_experts, got {self.num_groups=} {self.num_experts=}"
            )
        if self.top_k % self.num_groups:
            raise ValueError(
                f"top_k must be a multiple of num_groups (top_k / num_groups per group), got "
                f"{self.top_k=} {self.num_groups=}"
            )
        # NaN fails every comparison and inf would make C = n (silently dropless) or an
        # infinite loss: each number must be finite.
        if self.capacity_factor is not None and not 0 < self.capacity_factor < math.inf:
            raise ValueError(
                f"capacity_factor must be positive and finite, or None; got {self.capacity_factor=}"
            )
        for name in ("dropless_capacity", "overflow_chunk", "tiled_main"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(
                    f"{name} must be a positive finite number, got {name}={getattr(self, name)!r}"
                )
        for name in ("load_balance_weight", "z_loss_weight"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(
                    f"{name} must be a finite number >= 0, got {name}={getattr(self, name)!r}"
                )

    @property
    def experts_per_group(self) -> int:
        return self.num_experts // self.num_groups

    @property
    def active_fraction(self) -> float:
        return self.top_k / self.num_experts

    def capacity(self, num_tokens: int) -> int | None:
        """C for `num_tokens` tokens, or None when dropless."""
        if self.capacity_factor is None:
            return None
        mean = num_tokens * self.top_k / self.num_experts
        return min(num_tokens, max(self.min_capacity, math.ceil(self.capacity_factor * mean)))

    def dropless_sizes(self, num_tokens: int) -> tuple[int, int]:
        """(C0, chunk): rows per expert of the dropless main buffer and of each overflow trip."""
        mean = num_tokens * self.top_k / self.num_experts
        main = min(num_tokens, max(1, math.ceil(self.dropless_capacity * mean)))
        return main, min(num_tokens, max(1, math.ceil(self.overflow_chunk * mean)))

    def tiled_sizes(self, num_tokens: int) -> tuple[int, int]:
        """(C0, T): the TILED implementation's main buffer rows per expert and tile rows."""
        mean = num_tokens * self.top_k / self.num_experts
        main = min(num_tokens, max(1, math.ceil(self.tiled_main * mean)))
        return main, self.tile_size(num_tokens)

    def tile_size(self, num_tokens: int) -> int:
        """T, the TILED implementation's rows per overflow tile for `num_tokens` tokens.

        `tile_rows`, or a quarter of the mean load if that is smaller: the spare rows of
        the experts' last tiles (at most E (T - 1)) then stay under a quarter of the active
        rows. 128 rows measured as fast as 256 on XLA CPU at 4,096 tokens (64: slower, a
        scan step per tile costs).
        """
        mean = num_tokens * self.top_k / self.num_experts
        return max(1, min(self.tile_rows, math.ceil(mean / 4)))

    def replace(self, **kw: Any) -> MoEConfig:
        return dataclasses.replace(self, **kw)

    # Presets -------------------------------------------------------------------------------

    @classmethod
    def tiny(cls, **kw: Any) -> MoEConfig:
        """For tests: 4 experts, top-2."""
        return cls(**{"num_experts": 4, "top_k": 2, **kw})

    @classmethod
    def minilm_moefication(cls, active: float = 0.25, num_experts: int = 8, **kw: Any):
        """MoEfication of MiniLM's 1536-wide FFN: `num_experts` experts, `active` of them run.

        8 experts of 192 neurons by default, chosen for the hardware: 192 is a whole number
        of 64-wide GPU tiles, and on the 2-core CPU the CAPACITY implementation at 25% active
        measured 2.3-2.8x faster than the dense FFN with E=8 (4,096 tokens) but only
        1.4-1.6x with E=16: there twice the assignments (k=4) go through the dispatch
        gather and the combine, which cost as much as the matmuls saved. Finer experts
        route more precisely (E=16 keeps ~1.5 points more SST-2 accuracy at 25%), so on
        accelerators, where the gathers are cheap, E=16 is the better trade.
        """
        top_k = max(1, round(active * num_experts))
        return cls(**{"num_experts": num_experts, "top_k": top_k, "router": RouterKind.MLP, **kw})

    @classmethod
    def switch(cls, num_experts: int = 8, top_k: int = 2, **kw: Any) -> MoEConfig:
        """A trainable MoE FFN: learned softmax gates, capacity factor 1.25."""
        base = dict(
            num_experts=num_experts,
            top_k=top_k,
            router=RouterKind.LINEAR,
            gate=GateKind.SOFTMAX,
            capacity_factor=1.25,
        )
        return cls(**{**base, **kw})

    @classmethod
    def prototyping(cls, num_experts: int = 8, num_groups: int = 2, **kw: Any) -> MoEConfig:
        """Expert prototyping (M6-T): `num_groups` groups, top-1 in each, outputs summed."""
        base = dict(
            num_experts=num_experts,
            top_k=num_groups,
            num_groups=num_groups,
            router=RouterKind.LINEAR,
            gate=GateKind.SOFTMAX,
        )
        return cls(**{**base, **kw})
