"""The small byte-level GPT-2s of eval/speculative_gpt2.py, trained once and cached: one
with the plain LM loss, one with LayerSkip's drafting recipe (and a 2-layer Swift)."""

from __future__ import annotations

import json
import time
from typing import Any

from flax import nnx

from elang_jax import jsonio
from elang_jax.models._gpt2 import GPT2LMHeadModel
from elang_jax.speculative._text import (
    byte_gpt2_config,
    cache_path,
    load_model,
    save_model,
    token_blocks,
    training_sentences,
)
from elang_jax.speculative._train import LayerSkipConfig, train_decoder

RECIPES = {"plain": LayerSkipConfig.plain, "layerskip": LayerSkipConfig}


def train_or_load(
    name: str, steps: int, batch: int, length: int, lr: float, layers: int = 6
) -> tuple[GPT2LMHeadModel, dict[str, Any] | None]:
    """Model `name` (a key of `RECIPES`) trained for `steps` steps of `batch` x `length`
    bytes, or loaded from the cache; and its training log (None if absent)."""
    config = byte_gpt2_config(n_layer=layers)
    recipe = RECIPES[name](learning_rate=lr, warmup_steps=min(30, steps))
    tag = name if layers == 6 else f"{name}_{layers}l"
    path = cache_path(f"gpt2_bytes_{tag}", config, repr((recipe, steps, batch, length)))
    log_path = path.with_suffix(".json")
    if path.exists():
        print(f"reusing {path}")
        log = json.loads(log_path.read_text()) if log_path.exists() else None
        return load_model(config, path), log
    model = GPT2LMHeadModel(config, rngs=nnx.Rngs(0))
    blocks = token_blocks(training_sentences(), batch, length, seed=0)
    t0 = time.time()
    log = train_decoder(
        model,
        blocks,
        recipe,
        steps=steps,
        log_every=25,
        progress=lambda i, loss: print(
            f"{name} step {i} loss {loss:.3f} {time.time() - t0:.0f}s", flush=True
        ),
    )
    save_model(model, path)
    record = {"steps": log.steps, "seconds": log.seconds, "losses": list(log.losses)}
    jsonio.write_json(record, log_path)
    return model, record
