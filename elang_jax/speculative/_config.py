"""Self-speculative decoding configuration: how deep the draft runs and how far it looks."""

from __future__ import annotations

import dataclasses
import numbers


def _whole(value, name: str, low: int) -> int:
    """`value` as an int >= low, else a ValueError naming the field and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number (an int), got {name}={value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {name}={value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpeculativeConfig:
    """Early-exit self-speculation (LayerSkip): draft with the first layers, verify with all.

    Attributes:
      draft_layers: L_d, the layers the draft runs before the shared final norm and LM head
        (1 <= L_d < the model's layers; checked against a model by `check`).
      k: tokens drafted per verification call (>= 1); the verifier runs k + 1 positions.
    """

    draft_layers: int
    k: int = 4

    def __post_init__(self):
        object.__setattr__(self, "draft_layers", _whole(self.draft_layers, "draft_layers", 1))
        object.__setattr__(self, "k", _whole(self.k, "k", 1))

    def check(self, num_layers: int) -> None:
        """Raises unless the draft is a strict prefix of a `num_layers`-layer stack."""
        if self.draft_layers >= num_layers:
            raise ValueError(
                f"draft_layers={self.draft_layers} must be below the model's {num_layers} "
                "layers (a draft as deep as the model saves nothing)"
            )

    @classmethod
    def tiny(cls, **kw) -> SpeculativeConfig:
        """For tests on two- or three-layer models: one draft layer, two drafted tokens."""
        return cls(**{"draft_layers": 1, "k": 2, **kw})

    @classmethod
    def layerskip(cls, num_layers: int, **kw) -> SpeculativeConfig:
        """A quarter of the stack drafts (at least one layer), four tokens a call: LayerSkip's
        usual exit depth for its Llama models."""
        return cls(**{"draft_layers": max(1, num_layers // 4), "k": 4, **kw})
