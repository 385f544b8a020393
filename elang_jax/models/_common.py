"""Building blocks shared by every backbone: attention, feed-forward, input checks.

Shape vocabulary used in signatures and shape comments throughout `elang_jax.models`:
  b batch, t query length, s key length, d model width, h heads, k head width,
  f feed-forward width, v vocabulary, l layers, c cache length.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.core import Tracer  # public in jax 0.10; `jax.core` is not an attribute pyright sees
from jaxtyping import Array, Bool, Float, Int

# ---------------------------------------------------------------------------
# Input validation. Shapes and dtypes are static, so they are always checked; values are
# checked whenever the array is concrete (eager calls, data pipeline). Under `jit` the values
# are tracers and the data pipeline (`elang_jax.data`) is where ids are checked.
# ---------------------------------------------------------------------------


def is_concrete(x: Any) -> bool:
    """False for a tracer (under `jit`/`vmap`/`grad`), whose values are not known yet."""
    return not isinstance(x, Tracer)


def check_token_ids(input_ids: Any, vocab_size: int, name: str = "input_ids") -> None:
    """Raises a clear error for ids of the wrong rank, dtype or outside [0, vocab_size)."""
    if getattr(input_ids, "ndim", None) != 2:
        raise ValueError(
            f"{name} must have shape [batch, length], got shape {getattr(input_ids, 'shape', None)}"
        )
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integers, got dtype {input_ids.dtype}")
    if is_concrete(input_ids) and input_ids.size:
        ids = np.asarray(input_ids)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = ids[(ids < 0) | (ids >= vocab_size)]
            raise ValueError(
                f"{name} holds token ids outside the vocabulary [0, {vocab_size}): "
                f"{sorted(set(bad.tolist()))[:10]}"
            )


def check_mask(
    mask: Any, shape: tuple[int, ...], name: str = "attention_mask", *, binary: bool | None = None
) -> None:
    """Shape check; a `binary` array (default: one named a mask) must also hold only 0 and
    1 (checked when concrete). The same check serves position and type ids, which are not.

    A mask of 0.5 would be read as "keep" by a forward that tests `mask != 0` and as "drop"
    by one that casts to int: refusing it keeps every path on the same answer.
    """
    if tuple(np.shape(mask)) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(np.shape(mask))}")
    binary = "mask" in name if binary is None else binary
    if binary and is_concrete(mask) and np.size(mask):
        m = np.asarray(mask)
        if m.dtype != bool and not np.isin(m, (0, 1)).all():
            bad = np.unique(m[~np.isin(m, (0, 1))])[:5].tolist()
            raise ValueError(f"{name} must hold only 0 and 1, got values {bad}")


def check_length(length: int, limit: int, what: str = "sequence") -> None:
    if length < 1:
        raise ValueError(f"{what} length must be >= 1, got {length}: there are no tokens to run")
    if length > limit:
        raise ValueError(f"{what} length {length} exceeds the model's maximum of {limit} positions")


# ---------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------


class Activation(enum.StrEnum):
    GELU = "gelu"  # exact erf GELU (BERT, RoBERTa, MiniLM)
    GELU_TANH = "gelu_new"  # tanh approximation (GPT-2, T5 v1.1)
    RELU = "relu"


def activation_fn(kind: Activation | str):
    kind = Activation(_HF_ACTIVATION_ALIASES.get(str(kind), str(kind)))
    if kind is Activation.GELU:
        return lambda x: jax.nn.gelu(x, approximate=False)
    if kind is Activation.GELU_TANH:
        return lambda x: jax.nn.gelu(x, approximate=True)
    return jax.nn.relu


_HF_ACTIVATION_ALIASES = {
    "gelu_pytorch_tanh": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu_python": "gelu",
}


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------


def mask_to_bias(mask: Bool[Array, "b s"] | Int[Array, "b s"], dtype=jnp.float32):
    """[b s] keep-mask to an additive bias broadcastable to [b h t s]."""
    # [b 1 1 s]
    return jnp.where(mask[:, None, None, :].astype(bool), 0.0, jnp.finfo(dtype).min).astype(dtype)


def dot_product_attention(
    q: Float[Array, "b t h k"],
    k: Float[Array, "b s h k"],
    v: Float[Array, "b s h k"],
    bias: Float[Array, "#b #h #t s"] | None,
    scale: float,
    return_probs: bool = False,
) -> tuple[Float[Array, "b t h k"], Float[Array, "b h t s"] | None]:
    """Softmax attention, softmax computed in float32 whatever the input dtype."""
    logits = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32)
    if scale != 1.0:
        logits = logits * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhts,bshk->bthk", probs.astype(v.dtype), v)
    return out, (probs if return_probs else None)


@dataclasses.dataclass(frozen=True)
class KVCache:
    """Per-layer key/value cache of static length c. `index` is the next write position."""

    key: Float[Array, "b c h k"]
    value: Float[Array, "b c h k"]


jax.tree_util.register_dataclass(KVCache, data_fields=["key", "value"], meta_fields=[])


def update_cache(
    cache: KVCache, k: jax.Array, v: jax.Array, index: Int[Array, ""] | int
) -> KVCache:
    """Writes [b t h k] keys and values at position `index` of the cache."""
    key = jax.lax.dynamic_update_slice_in_dim(cache.key, k.astype(cache.key.dtype), index, axis=1)
    value = jax.lax.dynamic_update_slice_in_dim(
        cache.value, v.astype(cache.value.dtype), index, axis=1
    )
    return KVCache(key=key, value=value)


class MultiHeadAttention(nnx.Module):
    """Q/K/V/O projections around `dot_product_attention`, self- or cross-attention.

    Projections are named `query`, `key`, `value`, `output` for every backbone so that
    methods (token pruning, exits) can treat layers alike.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        head_dim: int,
        *,
        use_bias: bool,
        scale: float,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        inner = num_heads * head_dim

        def linear(d_in: int, d_out: int) -> nnx.Linear:
            return nnx.Linear(
                d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )

        self.query = linear(d_model, inner)
        self.key = linear(d_model, inner)
        self.value = linear(d_model, inner)
        self.output = linear(inner, d_model)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale

    def split_heads(self, x: Float[Array, "b t hk"]) -> Float[Array, "b t h k"]:
        """A projection's output, one slice per head."""
        # [b t (h k)] -> [b t h k]
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    def project_kv(self, x: Float[Array, "b s d"]) -> tuple[jax.Array, jax.Array]:
        """Keys and values [b s h k] of `x` (what a KV cache stores)."""
        return self.split_heads(self.key(x)), self.split_heads(self.value(x))

    def values(self, x: Float[Array, "b s d"]) -> Float[Array, "b s h k"]:
        """The value vectors of `x` per head (ACC's value-norm scores read them)."""
        return self.split_heads(self.value(x))

    def __call__(
        self,
        x: Float[Array, "b t d"],
        bias: Float[Array, "#b #h #t s"] | None,
        *,
        kv: tuple[jax.Array, jax.Array] | None = None,
        return_probs: bool = False,
    ) -> tuple[Float[Array, "b t d"], Float[Array, "b h t s"] | None]:
        """Attends from `x` to `kv` (precomputed [b s h k] keys and values) or to itself."""
        q = self.split_heads(self.query(x))
        k, v = kv if kv is not None else self.project_kv(x)
        out, probs = dot_product_attention(q, k, v, bias, self.scale, return_probs)
        # [b t h k] -> [b t (h k)]
        out = out.reshape(*out.shape[:-2], self.num_heads * self.head_dim)
        return self.output(out), probs


# ---------------------------------------------------------------------------
# Feed-forward (the pluggable FFN: MoE layers replace `layer.ffn`)
# ---------------------------------------------------------------------------


class FeedForward(nnx.Module):
    """Dense FFN: w_out(act(w_in x)) or, gated, w_out(act(w_gate x) * w_in x).

    Any module with the same call signature ([..., d] -> [..., d]) can replace it as
    `layer.ffn`; that is how MoE FFNs plug into every backbone.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        activation: Activation | str,
        gated: bool = False,
        use_bias: bool = True,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):

        def linear(d_in: int, d_out: int) -> nnx.Linear:
            return nnx.Linear(
                d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )

        self.w_in = linear(d_model, d_ff)
        self.w_gate = linear(d_model, d_ff) if gated else None
        self.w_out = linear(d_ff, d_model)
        self.activation = str(activation)

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        act = activation_fn(self.activation)
        if self.w_gate is None:
            h = act(self.w_in(x))
        else:
            h = act(self.w_gate(x)) * self.w_in(x)
        return self.w_out(h)


def dropout(x: jax.Array, rate: float, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout, active only when `rngs` is given (training); identity otherwise."""
    if rngs is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)
