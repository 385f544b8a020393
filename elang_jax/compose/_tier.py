"""One tier's traced forward: early exit, ACC token pruning and MoE FFNs in one pass.

A tier that exits early runs the multi-exit loop (`elang_jax.exits.exit_loop`, the loop of
`MultiExit.exit_step`) with the tier's keep schedule: the stack runs in segments, one per
exit, the examples still running are packed into a bucket after each exit, and inside a
segment the layers run one at a time so that ACC can drop tokens between them. A tier that
does not exit runs the classifier, pruned (`acc_classify`) or not. MoE FFNs need nothing
here: they sit inside the layers.

Shape names: b rows, t padded length, c classes, x exits.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float

from elang_jax.compose._config import ComposedTierConfig
from elang_jax.core import bucket_sizes
from elang_jax.exits import ExitPolicy, MultiExit, all_exit_logits, exit_loop
from elang_jax.models import BertForSequenceClassification
from elang_jax.moe import MoEFeedForward, ffn_sites
from elang_jax.pruning import AccSelector, KeepSchedule, acc_classify


def classifier_of(module: nnx.Module) -> BertForSequenceClassification:
    """The BERT-family classifier of a tier's module (a MultiExit wraps one)."""
    model = module.model if isinstance(module, MultiExit) else module
    if not isinstance(model, BertForSequenceClassification):
        raise TypeError(
            "a tier's module must be a BertForSequenceClassification or a MultiExit, "
            f"got {type(module).__name__}"
        )
    return model


def schedule_of(tier: ComposedTierConfig, num_layers: int) -> KeepSchedule | None:
    """The tier's keep schedule, or None when it keeps every token."""
    if tier.acc_rate is None or tier.acc_rate >= 1.0:
        return None
    return KeepSchedule.from_speed(tier.acc_rate, num_layers, tier.acc_config)


def set_active_experts(module: nnx.Module, tier: ComposedTierConfig) -> None:
    """Sets the tier's MoE FFNs to run `tier.moe.top_k` experts through `tier.moe.impl`.
    Called on the engine's merged copy of the module inside the traced step, never on the
    caller's module."""
    if tier.moe is None:
        return
    for site in ffn_sites(classifier_of(module)):  # pyright: ignore[reportArgumentType]
        ffn = site.ffn
        assert isinstance(ffn, MoEFeedForward)
        ffn.config = ffn.config.replace(top_k=tier.moe.top_k, impl=tier.moe.impl)


def tier_forward(
    module: nnx.Module,
    tier: ComposedTierConfig,
    inputs: dict[str, Array],
    valid: Bool[Array, " b"],
    exit_threshold: Float[Array, ""],
) -> dict[str, Array]:
    """One tier on a batch (traced). Returns logits [b c] float32, exit_index [b] int32,
    layers [b] int32 (layers run; 0 for rows that are not valid) and rows (int32 []: the
    rows its first segment ran on; b for a tier without exits, which packs nothing)."""
    model = classifier_of(module)
    num_layers = len(model.encoder.layers)
    schedule = schedule_of(tier, num_layers)
    ids, mask, types = inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]
    b = ids.shape[0]
    if tier.exits is None:
        if schedule is None:
            logits = model(ids, mask, types).logits
        else:
            logits = acc_classify(model, ids, mask, types, schedule).logits
        assert logits is not None
        return dict(
            logits=logits.astype(jnp.float32),
            exit_index=jnp.zeros((b,), jnp.int32),
            layers=jnp.where(valid, num_layers, 0).astype(jnp.int32),
            rows=jnp.int32(b),
        )
    assert isinstance(module, MultiExit)
    out = exit_loop(
        module,
        inputs,
        valid,
        ExitPolicy(tier.exits.policy),
        exit_threshold,
        jnp.int32(tier.exits.patience),
        bucket_sizes(b, tier.exits.bucket_fractions),
        None if schedule is None else AccSelector(schedule),
    )
    return dict(
        logits=out["logits"],
        exit_index=out["exit_index"],
        layers=out["layers"],
        rows=out["buckets_used"][0, 0],
    )


def tier_exit_logits(
    module: nnx.Module, tier: ComposedTierConfig, inputs: dict[str, Array]
) -> Float[Array, "x b c"]:
    """Every exit's logits of the tier (no example leaves; traced); one exit for a tier
    that does not exit early."""
    model = classifier_of(module)
    schedule = schedule_of(tier, len(model.encoder.layers))
    if tier.exits is not None:
        assert isinstance(module, MultiExit)
        return all_exit_logits(module, inputs, None if schedule is None else AccSelector(schedule))
    b = inputs["input_ids"].shape[0]
    out = tier_forward(module, tier, inputs, jnp.ones((b,), bool), jnp.float32(jnp.inf))
    return out["logits"][None]
