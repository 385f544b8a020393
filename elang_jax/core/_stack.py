"""The layer-stack runner: a backbone's layers [start, stop) with hooks between them.

Every method that works between layers runs its stack through `run_stack`: ACC token
pruning (a `TokenSelector` drops columns before a layer and scores tokens after the layer
before it), the multi-exit loop (which calls it once per segment between exits and pools
features after each layer through `after_layer`), and composed tiers (both). MoE needs no
hook: it lives inside the layers' pluggable FFN. The backbone is reached through one
`LayerFn`, so BERT-family encoders, the T5 encoder and the GPT-2 prefill share the loop.

Shape names: b rows, t padded length, n tokens at hand, d width, h heads, k head width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StackState:
    """The tokens an example carries from layer to layer.

    Attributes:
      h: [b n d] hidden states of the tokens at hand.
      mask: [b n] int32, 1 for real tokens, 0 for padding.
      positions: [b n] int32, each token's column in the input.
      scores: [b n] float32 token scores left by the last layer for the next selection
        (zeros when no selection follows).
    """

    # `*b`: `jax.vmap` over the batch (pruning's per-example gathers) rebuilds states of
    # single examples, [n d] and [n].
    h: Float[Array, "*b n d"]
    mask: Int[Array, "*b n"]
    positions: Int[Array, "*b n"]
    scores: Float[Array, "*b n"]

    @classmethod
    def start(cls, h: Float[Array, "b t d"], mask: Array) -> StackState:
        """Every column of a padded batch, before layer 0."""
        b, t = h.shape[:2]
        return cls(
            h=h,
            mask=mask.astype(jnp.int32),
            positions=jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
            scores=jnp.zeros((b, t), jnp.float32),
        )

    @classmethod
    def zeros(cls, b: int, n: int, d: int, dtype: Any) -> StackState:
        """Placeholder rows of the shapes a stack leaves behind (rows that stopped early)."""
        return cls(
            h=jnp.zeros((b, n, d), dtype),
            mask=jnp.zeros((b, n), jnp.int32),
            positions=jnp.zeros((b, n), jnp.int32),
            scores=jnp.zeros((b, n), jnp.float32),
        )

    def replace(self, **kw) -> StackState:
        return dataclasses.replace(self, **kw)


@runtime_checkable  # beartype checks arguments against it under pytest
class LayerFn(Protocol):
    """Runs layer i on the tokens at hand.

    Returns the new hidden states [b n d], the layer's attention probabilities [b h n n]
    when `want_probs`, and its values [b n h k] when `want_values` (else None).
    """

    def __call__(
        self, i: int, state: StackState, want_probs: bool, want_values: bool
    ) -> tuple[Array, Array | None, Array | None]: ...


@runtime_checkable  # beartype checks arguments against it under pytest
class TokenSelector(Protocol):
    """Chooses which tokens each layer runs on (ACC pruning implements it)."""

    def counts(self, length: int) -> tuple[int, ...]:
        """Static tokens entering each layer for a padded length."""
        ...

    @property
    def wants_values(self) -> bool:
        """Whether `score` reads the layer's values."""
        ...

    def select(self, state: StackState, n: int) -> StackState:
        """Keeps n of the tokens at hand, per example."""
        ...

    def score(self, probs: Array, values: Array | None, state: StackState) -> Array:
        """[b n] token scores from a layer's attention (its output `state`)."""
        ...


def full_counts(num_layers: int, length: int) -> tuple[int, ...]:
    """Counts when every token runs every layer."""
    return (int(length),) * num_layers


def run_stack(
    layer_fn: LayerFn,
    state: StackState,
    start: int,
    stop: int,
    counts: tuple[int, ...],
    selector: TokenSelector | None = None,
    after_layer: Callable[[int, StackState, Any], Any] | None = None,
    extra: Any = None,
) -> tuple[StackState, Any]:
    """Layers [start, stop) with token selection between them.

    Before layer i, a count below the tokens at hand makes `selector` keep `counts[i]`
    columns; a layer whose successor keeps fewer tokens returns its attention probabilities
    and `selector` scores the tokens from them. `after_layer(i, state, extra) -> extra` runs
    after each layer (e.g. an exit's feature history). `counts` are static, so shapes are.

    Returns (state after layer stop - 1, extra).
    """
    for i in range(start, stop):
        n = counts[i]
        if n < state.h.shape[1]:
            if selector is None:
                raise ValueError(f"layer {i} keeps {n} of {state.h.shape[1]} tokens: no selector")
            state = selector.select(state, n)
        selects_next = selector is not None and i + 1 < len(counts) and counts[i + 1] < n
        want_values = selects_next and selector is not None and selector.wants_values
        h, probs, values = layer_fn(i, state, selects_next, want_values)
        state = state.replace(h=h)
        if selects_next:
            assert selector is not None and probs is not None
            state = state.replace(scores=selector.score(probs, values, state))
        else:
            state = state.replace(scores=jnp.zeros(state.mask.shape, jnp.float32))
        if after_layer is not None:
            extra = after_layer(i, state, extra)
    return state, extra
