"""ACC scores, token selection and the per-example gather.

Shape names: b batch, h heads, t query tokens, s key tokens, k head width, d model width,
n kept tokens.

Definition (ours; the paper's exact formula is not available offline). For one layer with
attention probabilities A[h, i, j] (query i, key j), Q the set of real (non-padding) queries,
H heads and v[h, j] the value vector of token j in head h:

  ATTENTION:   ACC_j = 1/H sum_h 1/|Q_j| sum_{i in Q_j} A[h, i, j]
  VALUE_NORM:  ACC_j = 1/H sum_h 1/|Q_j| sum_{i in Q_j} A[h, i, j] * ||v[h, j]||_2

Q_j is Q for bidirectional encoders; with `causal_positions` it is the real queries at or
after j (those that can see j). A[h, i, j] v[h, j] is exactly token j's term in query i's
context vector, so VALUE_NORM is the mean size of what j contributes to the contexts and
ATTENTION its mean share of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from elang_jax.core._compaction import gather_rows


def acc_scores(
    probs: Float[Array, "b h t s"],
    query_mask: Int[Array, "b t"] | Bool[Array, "b t"] | None = None,
    *,
    values: Float[Array, "b s h k"] | None = None,
    causal_positions: Int[Array, "b t"] | None = None,
) -> Float[Array, "b s"]:
    """Attention Context Contribution of every key token (see the module docstring).

    Args:
      probs: a layer's attention probabilities (rows sum to 1 over s).
      query_mask: 1 for real query tokens; padding queries do not vote. None: all real.
      values: the layer's [b s h k] value vectors; given, each probability is weighted by
        the norm of its value (the VALUE_NORM variant).
      causal_positions: self-attention of a causal decoder (s == t): each token's original
        position; a key's mass is averaged over the real queries that can see it.

    Returns:
      [b s] float32 scores, higher = more important. Scores of padding keys are meaningless:
      `select_tokens` masks them.
    """
    b, h, t, s = probs.shape
    probs = jax.lax.stop_gradient(probs.astype(jnp.float32))
    qmask = (
        jnp.ones((b, t), jnp.float32)
        if query_mask is None
        else query_mask.astype(jnp.float32).reshape(b, t)
    )
    if values is None:
        # [b h t s] x [b t] -> [b s]
        mass = jnp.einsum("bhts,bt->bs", probs, qmask)
    else:
        norms = jnp.linalg.norm(jax.lax.stop_gradient(values).astype(jnp.float32), axis=-1)
        # [b h t s] x [b t] x [b s h] -> [b s]
        mass = jnp.einsum("bhts,bt,bsh->bs", probs, qmask, norms)
    if causal_positions is None:
        voters = jnp.sum(qmask, axis=1, keepdims=True)
    else:
        if s != t:
            raise ValueError(f"causal_positions needs self-attention (s == t), got {t=} {s=}")
        # [b t s]: query i can see key j
        sees = causal_positions[:, :, None] >= causal_positions[:, None, :]
        voters = jnp.einsum("bts,bt->bs", sees.astype(jnp.float32), qmask)
    return mass / (h * jnp.maximum(voters, 1.0))


def select_tokens(
    scores: Float[Array, "b t"],
    num_keep: int,
    token_mask: Int[Array, "b t"] | Bool[Array, "b t"],
    *,
    keep_first: int = 0,
    keep_last: int = 0,
) -> Int[Array, "b n"]:
    """Columns of the `num_keep` tokens to keep per row, ascending (original order).

    Priority: the protected first/last columns, then real tokens by score, then padding in
    column order. Padding therefore never displaces a real token, and ties go to the earlier
    column (`lax.top_k` is stable), so the choice is a function of the row alone.

    Example, t = 6, num_keep = 3, keep_first = 1, mask = [1 1 1 1 0 0],
    scores = [.1 .3 .1 .5 .9 .9]: priorities [inf .3 .1 .5 -inf -inf] -> columns [0 1 3].
    """
    t = scores.shape[1]
    if not 1 <= num_keep <= t:
        raise ValueError(f"num_keep must lie in [1, {t}], got {num_keep}")
    column = jnp.arange(t)
    protected = (column < keep_first) | (column >= t - keep_last)
    priority = jnp.where(token_mask.astype(bool), scores.astype(jnp.float32), -jnp.inf)
    priority = jnp.where(protected[None, :], jnp.inf, priority)
    _, columns = jax.lax.top_k(priority, num_keep)
    return jnp.sort(columns, axis=-1).astype(jnp.int32)


def gather_tokens(tree, columns: Int[Array, "b n"]):
    """Per-example gather along the token axis of every [b t ...] leaf of `tree`.

    This is `elang_jax.core.gather_rows` mapped over the batch: each example keeps its own
    columns. `compact_apply` does not fit here: it packs whole examples into a bucket chosen
    at run time, while ACC keeps a static count of tokens inside every example.
    """
    return jax.vmap(gather_rows)(tree, columns)
