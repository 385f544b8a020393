"""Hugging Face checkpoint import and export."""

from elang_jax.hf._auto import from_pretrained, save_pretrained
from elang_jax.hf._registry import Family, RuleSet, families, register
from elang_jax.hf._rules import CheckpointMismatchError, LoadReport, Rule

__all__ = [
    "CheckpointMismatchError",
    "Family",
    "LoadReport",
    "Rule",
    "RuleSet",
    "families",
    "from_pretrained",
    "register",
    "save_pretrained",
]
