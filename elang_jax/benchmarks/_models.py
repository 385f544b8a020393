"""Models and inputs shared by the benchmarks: classifiers of the configured shape, random
token batches, and the cheapest jitted call of a module.

Shape vocabulary: b batch rows, t padded length, c classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float, Int

from elang_jax.benchmarks._config import BenchConfig
from elang_jax.models import BertForSequenceClassification

Inputs = dict[str, Int[Array, "b t"]]


def pretrained_dir(config: BenchConfig) -> Path | None:
    """The cached all-MiniLM-L6-v2 directory `config.weights` asks for, or None (random).

    Never downloads: a speed suite must not depend on the network.
    """
    if config.weights == "random":
        return None
    from elang_jax.checkpoints import minilm_l6_dir

    try:
        return minilm_l6_dir(download=False)
    except FileNotFoundError as e:
        if config.weights == "auto":
            return None
        raise ValueError(f"weights='pretrained' but the checkpoint is not cached: {e}") from e


def build_classifier(
    config: BenchConfig, num_layers: int | None = None, *, seed: int = 0
) -> BertForSequenceClassification:
    """A 2-class classifier of the configured shape with `num_layers` layers (default: all).

    Random weights from `config.seed + seed`, or all-MiniLM-L6-v2's first `num_layers`
    layers (head random) when `config.weights` finds the checkpoint.
    """
    n = config.num_layers if num_layers is None else num_layers
    path = pretrained_dir(config)
    if path is not None:
        from elang_jax.hf import from_pretrained

        # The checkpoint has no classification head and the loader warns that it starts one
        # at random; here that is the point (timing does not need a trained head).
        logger = logging.getLogger("elang_jax.hf._auto")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            model = from_pretrained(
                path,
                head="sequence_classification",
                num_labels=2,
                seed=config.seed + seed,
                num_layers=n,
            )
        finally:
            logger.setLevel(level)
        assert isinstance(model, BertForSequenceClassification)
        return model
    return BertForSequenceClassification(
        config.encoder_config(n), rngs=nnx.Rngs(config.seed + seed)
    )


def random_inputs(config: BenchConfig, batch_size: int | None = None) -> Inputs:
    """A full (unpadded) batch [b t] of random ordinary token ids, on the device."""
    b = config.batch_size if batch_size is None else batch_size
    vocab = config.encoder_config().vocab_size
    rng = np.random.default_rng(config.seed)
    # Ids above the special tokens of BERT's vocabulary ([PAD] 0 ... [MASK] 103).
    low = 1000 if vocab > 2000 else 1
    ids = rng.integers(low, vocab, size=(b, config.seq_len), dtype=np.int32)
    ids[:, 0] = min(101, vocab - 1)  # a [CLS] in front, as the tokenizer puts it
    return dict(
        input_ids=jnp.asarray(ids),
        attention_mask=jnp.ones(ids.shape, jnp.int32),
        token_type_ids=jnp.zeros(ids.shape, jnp.int32),
    )


def jit_module(module: nnx.Module, fn: Callable) -> Callable:
    """`call(*args) -> fn(module, *args)` jitted, with the module split once outside.

    Only arrays cross the `jax.jit` boundary, the cheapest per-call path in NNX (0.09 ms of
    overhead against 2.4 ms for `nnx.jit` on a tiny model, docs on the stack), so the
    timings measure the computation rather than the Python around it.
    """
    graphdef, state = nnx.split(module)
    run = jax.jit(lambda state, *args: fn(nnx.merge(graphdef, state), *args))
    return lambda *args: run(state, *args)


def logits_fn(model: BertForSequenceClassification) -> Callable[[Inputs], Float[Array, "b c"]]:
    """The jitted dense forward `fn(inputs) -> logits [b c]` (every benchmark's baseline)."""

    def logits(model, inputs):
        out = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
        return out.logits.astype(jnp.float32)

    return jit_module(model, logits)
