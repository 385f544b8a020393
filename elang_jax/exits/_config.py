"""Multi-exit configuration: where the exits sit, how they are trained, when to leave."""

from __future__ import annotations

import dataclasses
import enum
import math
import numbers


class ExitPolicy(enum.StrEnum):
    """When an example leaves at an exit (thresholds are on `elang_jax.score` values).

    ENTROPY: DeeBERT; leave when -entropy(softmax(z / T)) >= threshold, i.e. entropy <= -threshold.
    PATIENCE: PABEE; leave when `patience` consecutive exits agree with this one's argmax.
    MAX_PROB: Right Tool for the Job; leave when the calibrated max softmax >= threshold.
    MARGIN: leave when top-1 minus top-2 softmax probability >= threshold.
    """

    ENTROPY = "entropy"
    PATIENCE = "patience"
    MAX_PROB = "max_prob"
    MARGIN = "margin"

    @property
    def score(self) -> str:
        """The `elang_jax.score` kind whose value is compared with the threshold."""
        # Patience compares argmaxes; its score is only reported.
        return "max_prob" if self is ExitPolicy.PATIENCE else self.value


class LossWeighting(enum.StrEnum):
    """Weights of the per-exit cross-entropies in joint training.

    UNIFORM: every exit 1 (Right Tool, DeeBERT's second stage).
    PABEE: exit j (1-based layer) weighted by j, normalised.
    GEOMETRIC: CALM's aggregation weight -1: exit k weighted 2^k, normalised.
    """

    UNIFORM = "uniform"
    PABEE = "pabee"
    GEOMETRIC = "geometric"


def _whole(value, name: str) -> int:
    """`value` as an int if it is an integer (2, np.int64(2)); else a ValueError naming the
    field (int() would truncate 1.7 to 1 silently)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number (an int), got {name}={value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MultiExitConfig:
    """Where the exits sit and how the batched exit step runs.

    Attributes:
      exit_layers: 1-based layer indices with an exit head, strictly increasing; the last
        must be the final layer (its exit is the model's own head). None: every layer.
      policy: the exit rule (see ExitPolicy).
      threshold: default confidence threshold (can be overridden per call). +inf never
        exits early; -inf always leaves at the first exit.
      patience: default PABEE patience (consecutive agreeing exits), >= 1.
      pooling: what an intermediate head reads from its layer: "cls" (the [CLS] vector,
        DeeBERT) or "mean" (the mean over real tokens; with a frozen backbone the early
        layers' [CLS] vectors barely depend on the sentence, the mean does).
      mix_cls: each intermediate head reads a learned, L2-normalised mix of the [CLS]
        vectors of the embeddings and every layer up to its own (Right Tool for the Job).
      bucket_fractions: static bucket sizes (fractions of the batch) that the examples
        still running are packed into after each exit.
    """

    exit_layers: tuple[int, ...] | None = None
    policy: ExitPolicy | str = ExitPolicy.ENTROPY  # strings are converted to the enum
    threshold: float = math.inf
    patience: int = 2
    pooling: str = "cls"
    mix_cls: bool = False
    bucket_fractions: tuple[float, ...] = tuple(i / 16 for i in range(17))

    def __post_init__(self):
        try:
            object.__setattr__(self, "policy", ExitPolicy(self.policy))
        except ValueError:
            valid = [p.value for p in ExitPolicy]
            raise ValueError(f"policy must be one of {valid}, got {self.policy!r}") from None
        if math.isnan(self.threshold):
            raise ValueError("threshold is NaN")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        object.__setattr__(self, "patience", _whole(self.patience, "patience"))
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")
        if self.exit_layers is not None:
            layers = tuple(_whole(x, "exit_layers") for x in self.exit_layers)
            if not layers or list(layers) != sorted(set(layers)) or layers[0] < 1:
                raise ValueError(
                    f"exit_layers must be strictly increasing 1-based layers, got {layers}"
                )
            object.__setattr__(self, "exit_layers", layers)
        for f in self.bucket_fractions:
            if not 0.0 <= f <= 1.0:
                raise ValueError(f"bucket fractions must lie in [0, 1], got {f}")

    def resolve_exits(self, num_layers: int) -> tuple[int, ...]:
        """The exit layers for a backbone of `num_layers` layers, validated against it."""
        layers = self.exit_layers or tuple(range(1, num_layers + 1))
        if layers[-1] != num_layers:
            raise ValueError(
                f"the last exit must be the final layer {num_layers} (the model's own head), "
                f"got exit_layers={layers}"
            )
        return layers

    @classmethod
    def deebert(cls, **kw) -> MultiExitConfig:
        return cls(**{"policy": ExitPolicy.ENTROPY, **kw})

    @classmethod
    def pabee(cls, **kw) -> MultiExitConfig:
        return cls(**{"policy": ExitPolicy.PATIENCE, "patience": 2, **kw})

    @classmethod
    def right_tool(cls, **kw) -> MultiExitConfig:
        return cls(**{"policy": ExitPolicy.MAX_PROB, "mix_cls": True, **kw})

    @classmethod
    def tiny(cls, **kw) -> MultiExitConfig:
        """For tests: exits after every layer, entropy policy, buckets 0, b/4, b/2, b."""
        return cls(**{"bucket_fractions": (0.0, 0.25, 0.5, 1.0), **kw})


def loss_weights(weighting: LossWeighting | str, exit_layers: tuple[int, ...]) -> tuple[float, ...]:
    """Normalised per-exit cross-entropy weights (sum to 1)."""
    weighting = LossWeighting(weighting)
    if weighting is LossWeighting.UNIFORM:
        raw = [1.0] * len(exit_layers)
    elif weighting is LossWeighting.PABEE:
        raw = [float(j) for j in exit_layers]
    else:
        raw = [2.0**k for k in range(len(exit_layers))]
    total = sum(raw)
    return tuple(w / total for w in raw)
