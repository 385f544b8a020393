"""Model cascades (E-LANG, TangoBERT, CascadeBERT) over the compaction core."""

from elang_jax.cascade._cascade import Cascade, CascadeOutput, Tier, TierConfig

__all__ = ["Cascade", "CascadeOutput", "Tier", "TierConfig"]
