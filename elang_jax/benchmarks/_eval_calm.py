"""CALM-style decoder exits on tiny random GPT-2 and T5 models (eval/bench_calm.py): mean
layers per generated token and the share of tokens identical to full-model decoding, over
thresholds.

Random weights make the softmax nearly flat, so the thresholds of the softmax measures are
small numbers here; the "state" measure (cosine similarity of consecutive hidden states) is
scale-free. Every run decodes the same prompts with the same model; only the threshold
changes, and +inf reproduces `generate` exactly. Nothing is timed.

Shape vocabulary: b prompts, t generated tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from elang_jax.exits import (
    CalmConfig,
    Confidence,
    calm_generate_gpt2,
    calm_generate_t5,
    mean_layers_per_token,
)
from elang_jax.models import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

# The thresholds swept per confidence measure, +inf (never exit) first, -inf (always) last.
CALM_THRESHOLDS = {
    "softmax_max": (math.inf, 0.02, 0.01, 0.005, -math.inf),
    "softmax_diff": (math.inf, 0.01, 0.003, 0.001, -math.inf),
    "state": (math.inf, 0.999, 0.99, 0.95, -math.inf),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalmEvalConfig:
    """The CALM sweep's sizes.

    Attributes:
      batch: b, prompts decoded at once (8 random tokens each).
      new_tokens: t, tokens generated per prompt.
      layers: decoder layers of both models.
    """

    batch: int = 16
    new_tokens: int = 24
    layers: int = 6

    def __post_init__(self):
        for name in ("batch", "new_tokens", "layers"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={value}")


def _agreement(tokens: np.ndarray, full: np.ndarray) -> float:
    """Share of generated positions equal to the full model's."""
    return float((tokens == full).mean())


def calm_sweep(config: CalmEvalConfig) -> dict[str, Any]:
    """Every measure at every threshold of `CALM_THRESHOLDS`, on GPT-2 and on T5.

    Returns:
      {"args": the config, "rows": one dict per (model, measure, threshold) with
      mean_layers and identical (share of tokens equal to full decoding)}.
    """
    rng = np.random.RandomState(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config.tiny(n_layer=config.layers, eos_token_id=None), rngs=nnx.Rngs(0)
    )
    t5 = T5ForConditionalGeneration(
        T5Config.tiny(num_layers=2, num_decoder_layers=config.layers), rngs=nnx.Rngs(0)
    )
    prompts = jnp.asarray(rng.randint(1, 90, (config.batch, 8)), jnp.int32)
    mask = jnp.ones_like(prompts)
    runs = {
        "gpt2": lambda cfg: calm_generate_gpt2(gpt2, prompts, mask, config.new_tokens, cfg),
        "t5": lambda cfg: calm_generate_t5(t5, prompts, mask, config.new_tokens, cfg),
    }
    rows = []
    for name, run in runs.items():
        full = np.asarray(run(CalmConfig()).tokens)
        for measure, thresholds in CALM_THRESHOLDS.items():
            for thr in thresholds:
                out = run(CalmConfig(confidence=Confidence(measure), threshold=thr))
                rows.append(
                    dict(
                        model=name,
                        measure=measure,
                        threshold=thr,
                        mean_layers=mean_layers_per_token(out),
                        identical=_agreement(np.asarray(out.tokens), full),
                    )
                )
    return dict(args=config, rows=rows)


def format_calm(result: dict[str, Any]) -> str:
    """`calm_sweep`'s result as a table."""
    c: CalmEvalConfig = result["args"]
    lines = [
        f"tiny models, {c.layers} decoder layers, batch {c.batch}, {c.new_tokens} tokens",
        f"{'model':<5} {'measure':<13} {'threshold':>9} {'layers/token':>12} {'identical':>9}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['model']:<5} {r['measure']:<13} {r['threshold']:>9.4g} "
            f"{r['mean_layers']:>12.2f} {100 * r['identical']:>8.1f}%"
        )
    return "\n".join(lines)
