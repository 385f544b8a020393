"""What self-speculation and the Swift-to-Super cascade share: the verification rule and
the prompt checks with room for the drafts."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int

from elang_jax.models._common import check_length
from elang_jax.models._gpt2 import GPT2Config, check_prompt


def check_draft_room(
    config: GPT2Config,
    input_ids: ArrayLike,
    attention_mask: ArrayLike | None,
    max_new_tokens: int | np.integer,
    k: int,
    who: str = "",
) -> Int[ArrayLike, "b t"]:
    """`generate`'s prompt checks for a model with `config`, plus room for the k tokens the
    last verification call may look past the last column; returns the mask (ones when
    None). `who` names the model in the messages."""
    attention_mask = check_prompt(config, input_ids, attention_mask, max_new_tokens)
    t = np.shape(input_ids)[1]
    check_length(
        t + int(max_new_tokens) + k,
        config.n_positions,
        f"prompt + max_new_tokens + k (k={k}{', the ' + who if who else ''})",
    )
    return attention_mask


def accept_drafts(
    drafts: Int[Array, "b w"],
    verified: Int[Array, "b w1"],
    also_accept: Bool[Array, "b w"] | None = None,
) -> tuple[Int[Array, "b w1"], Int[Array, " b"], Int[Array, " b"]]:
    """Per row, the longest prefix of drafts that stands, plus the verifier's next token.

    Shapes: w = k drafted tokens, w1 = k + 1 verified positions (k is the head width in the
    library's shape vocabulary, hence other letters here).

    Args:
      drafts: [b k] drafted tokens d_1..d_k.
      verified: [b k+1] the verifier's greedy token after each of prev, d_1, ..., d_k.
      also_accept: [b k] drafts that stand even where the verifier would differ (the lossy
        cascade's deferral rule); None: exact, a draft stands only if it is the verifier's.

    Returns:
      (tokens [b k+1], counts [b], accepted [b]): a row emits tokens[:, :counts], the
      `accepted` drafts that stood followed by the verifier's token after them
      (counts = accepted + 1).
    """
    k = drafts.shape[1]
    stands = drafts == verified[:, :k]
    if also_accept is not None:
        stands = stands | also_accept
    # [b k] a draft stands while every draft before it stood.
    accepted = jnp.sum(jnp.cumprod(stands, axis=1), axis=1, dtype=jnp.int32)
    cols = jnp.arange(k + 1, dtype=jnp.int32)
    # [b k+1] drafts before the first rejection, then the verifier's token (beyond: unused).
    padded = jnp.concatenate([drafts, verified[:, k:]], axis=1)
    tokens = jnp.where(cols[None, :] < accepted[:, None], padded, verified)
    return tokens.astype(jnp.int32), accepted + 1, accepted
