"""Static-shape batching: length buckets, padded batches, deterministic resumable order.

`jit` compiles once per input shape. Padding every batch to the longest example wastes compute,
padding each batch to its own longest example compiles a new program for almost every batch.
Buckets sit between the two: a batch is padded to the smallest bucket length that holds its
longest example, and every batch has exactly `batch_size` rows, so at most `len(buckets)`
shapes are ever compiled.

Shape vocabulary: b batch rows (static `batch_size`), t bucket length.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import flax.struct
import numpy as np
from jaxtyping import Array, Bool, Int

from elang_jax.data._tokenize import Encoded


@dataclasses.dataclass(frozen=True)
class LengthBuckets:
    """The padded sequence lengths a batch may have.

    Attributes:
      lengths: strictly ascending positive bucket lengths, e.g. `(32, 64, 128)`.
    """

    lengths: tuple[int, ...]

    def __post_init__(self):
        lengths = tuple(self.lengths)
        if not lengths:
            raise ValueError("LengthBuckets needs at least one length")
        if not all(isinstance(n, int | np.integer) and not isinstance(n, bool) for n in lengths):
            raise ValueError(f"bucket lengths must be integers, got {lengths=}")
        if lengths[0] < 1:
            raise ValueError(f"bucket lengths must be positive, got {lengths=}")
        if any(a >= b for a, b in zip(lengths, lengths[1:], strict=False)):
            raise ValueError(f"bucket lengths must be strictly ascending, got {lengths=}")
        object.__setattr__(self, "lengths", tuple(int(n) for n in lengths))

    @classmethod
    def powers_of_two(cls, min_length: int, max_length: int) -> LengthBuckets:
        """Buckets `min_length, 2 * min_length, ...`, ending with exactly `max_length`.

        Example: `powers_of_two(16, 128)` gives `(16, 32, 64, 128)`; `powers_of_two(16, 100)`
        gives `(16, 32, 64, 100)`.
        """
        if not 1 <= min_length <= max_length:
            raise ValueError(f"need 1 <= min_length <= max_length, got {min_length=} {max_length=}")
        lengths = []
        n = min_length
        while n < max_length:
            lengths.append(n)
            n *= 2
        return cls((*lengths, max_length))

    @property
    def max_length(self) -> int:
        """The largest bucket: the longest example that fits."""
        return self.lengths[-1]

    def bucket_for(self, n: int) -> int:
        """Returns the smallest bucket length >= `n`.

        Raises:
          ValueError: `n` is negative or longer than the largest bucket.
        """
        if n < 0:
            raise ValueError(f"length must be non-negative, got {n}")
        i = bisect.bisect_left(self.lengths, n)
        if i == len(self.lengths):
            raise ValueError(f"length {n} exceeds the largest bucket {self.max_length}")
        return self.lengths[i]

    def __len__(self) -> int:
        return len(self.lengths)


@flax.struct.dataclass
class Batch:
    """One padded batch of host (NumPy) arrays; a pytree, so it can go straight into `jit`.

    Rows with `valid=False` only fill the batch up to its static size: exclude them from losses
    and metrics with `valid`, never by looking at the labels.

    Attributes:
      input_ids: [b t] token ids, padded with the tokenizer's pad id.
      attention_mask: [b t] 1 for real tokens, 0 for padding. A padding row attends to its first
        position only, so that no row is fully masked (a fully masked row turns softmax or mean
        pooling into 0/0 = NaN, which `loss * valid` would not remove).
      token_type_ids: [b t] segment ids, 0 on padding.
      labels: [b] label ids; 0 on padding rows (so gathers by label stay in range), -1 on every
        row of an unlabeled dataset.
      valid: [b] True for real examples.
      index: [b] row of each example in the dataset, -1 for padding rows; use it to put
        predictions back in dataset order (`restore_order`).
    """

    # NumPy on the host; traced arrays when the batch is an argument of a `jit` function.
    input_ids: Int[np.ndarray | Array, "b t"]
    attention_mask: Int[np.ndarray | Array, "b t"]
    token_type_ids: Int[np.ndarray | Array, "b t"]
    labels: Int[np.ndarray | Array, " b"]
    valid: Bool[np.ndarray | Array, " b"]
    index: Int[np.ndarray | Array, " b"]

    @property
    def num_valid(self) -> int:
        """Number of real examples in the batch."""
        return int(np.sum(self.valid))


def num_batches(data: Encoded | int, batch_size: int) -> int:
    """Number of batches `iterate_batches` yields per epoch (the last one may be padded).

    Args:
      data: the encoded dataset, or its number of examples.
      batch_size: rows per batch.
    """
    n = data if isinstance(data, int) else len(data)
    _check_positive(batch_size=batch_size)
    return -(-n // batch_size)


def iterate_batches(
    encoded: Encoded,
    batch_size: int,
    buckets: LengthBuckets,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    sort_by_length: bool = False,
) -> Iterator[Batch]:
    """Yields fixed-size batches padded to length buckets, in a reproducible order.

    The order of an epoch depends only on `(seed, epoch)` (and the NumPy version), so training
    resumes exactly: restart the epoch with `start_batch` set to the number of batches already
    consumed, and the remaining batches are the ones the interrupted run would have seen.

    Args:
      encoded: the dataset (`encode_glue`).
      batch_size: rows per batch; the last batch is filled up with `valid=False` rows.
      buckets: the allowed padded lengths; every example must fit the largest.
      shuffle: shuffle the examples (training). Without it, examples come in dataset order.
      seed: shuffling seed.
      epoch: epoch number, mixed into the shuffling seed so that every epoch differs.
      start_batch: number of batches of this epoch to skip (for resuming).
      sort_by_length: group examples of similar length into the same batch, longest batches
        first, which wastes less padding (evaluation; `index` restores the order). With
        `shuffle` too, ties are broken randomly and the batch order is shuffled.

    Returns:
      An iterator of `Batch`es, each of exactly `batch_size` rows and a bucket length.

    Raises:
      ValueError: an example longer than the largest bucket, or bad arguments.
    """
    _check_positive(batch_size=batch_size)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got {seed=} {epoch=}")
    total = num_batches(encoded, batch_size)
    if not 0 <= start_batch <= total:
        raise ValueError(f"{start_batch=} must lie in [0, {total}] ({total} batches per epoch)")
    lengths = encoded.lengths
    too_long = np.flatnonzero(lengths > buckets.max_length)
    if too_long.size:
        raise ValueError(
            f"{too_long.size} examples are longer than the largest bucket {buckets.max_length}; "
            f"the first is index {int(too_long[0])} with {int(lengths[too_long[0]])} tokens"
        )

    order = _epoch_order(lengths, batch_size, shuffle, seed, epoch, sort_by_length)
    # A plain function returning a generator, so that the checks above run at the call and not
    # at the first next().
    return (
        _make_batch(encoded, order[b * batch_size : (b + 1) * batch_size], batch_size, buckets)
        for b in range(start_batch, total)
    )


def restore_order(
    indices: Iterable[np.ndarray], values: Iterable[np.ndarray], num_examples: int
) -> np.ndarray:
    """Puts per-batch predictions back in dataset order, dropping padding rows.

    Args:
      indices: each batch's `Batch.index` ([b], -1 on padding rows).
      values: each batch's predictions, [b, ...], in the same order as `indices`.
      num_examples: size of the dataset.

    Returns:
      [num_examples, ...] the predictions, row `i` belonging to example `i`.

    Raises:
      ValueError: an example is missing or appears twice.
    """
    idx_list = [np.asarray(i) for i in indices]
    val_list = [np.asarray(v) for v in values]
    if len(idx_list) != len(val_list):
        raise ValueError(f"got {len(idx_list)} index arrays but {len(val_list)} value arrays")
    if not idx_list:
        if num_examples:
            raise ValueError(f"no batches given for {num_examples} examples")
        return np.zeros((0,))
    idx = np.concatenate(idx_list)
    vals = np.concatenate(val_list)
    keep = idx >= 0
    idx, vals = idx[keep], vals[keep]
    counts = np.bincount(idx, minlength=num_examples)
    if idx.size != num_examples or counts.size != num_examples or np.any(counts != 1):
        missing = np.flatnonzero(counts[:num_examples] == 0)
        raise ValueError(
            f"predictions cover {idx.size} rows for {num_examples} examples; "
            f"{missing.size} missing (first {missing[:5].tolist()}), "
            f"{int(np.sum(counts > 1))} repeated"
        )
    out = np.empty((num_examples, *vals.shape[1:]), vals.dtype)
    out[idx] = vals
    return out


def _check_positive(**kwargs: int) -> None:
    for name, value in kwargs.items():
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")


def _epoch_order(
    lengths: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    sort_by_length: bool,
) -> np.ndarray:
    """The order in which one epoch visits the examples, as an int array of dataset rows."""
    n = lengths.shape[0]
    # SeedSequence mixes (seed, epoch) into independent streams: epoch 1 of seed 0 is unrelated
    # to epoch 0 of seed 1.
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch])) if shuffle else None
    order = rng.permutation(n) if rng is not None else np.arange(n)
    if not sort_by_length:
        return order
    # Stable sort, longest first: ties keep the (shuffled or dataset) order. Longest first makes
    # the most expensive batch the first one, so an out-of-memory error shows up at once.
    order = order[np.argsort(-lengths[order], kind="stable")]
    if rng is None:
        return order
    # Shuffle whole batches, keeping the padded remainder batch last so that every other batch
    # stays full.
    full = n // batch_size
    perm = rng.permutation(full)
    head = order[: full * batch_size].reshape(full, batch_size)[perm].reshape(-1)
    return np.concatenate([head, order[full * batch_size :]])


def _make_batch(
    encoded: Encoded, rows: Sequence[int] | np.ndarray, batch_size: int, buckets: LengthBuckets
) -> Batch:
    rows = np.asarray(rows, np.int64)
    t = buckets.bucket_for(int(encoded.lengths[rows].max()))
    input_ids = np.full((batch_size, t), encoded.pad_id, np.int32)
    attention_mask = np.zeros((batch_size, t), np.int32)
    token_type_ids = np.zeros((batch_size, t), np.int32)
    for r, i in enumerate(rows):
        n = int(encoded.lengths[i])
        input_ids[r, :n] = encoded.input_ids[i]
        token_type_ids[r, :n] = encoded.token_type_ids[i]
        attention_mask[r, :n] = 1
    # Padding rows attend to one pad token: see the `Batch.attention_mask` docstring.
    attention_mask[len(rows) :, 0] = 1

    if encoded.labels is None:
        labels = np.full(batch_size, -1, np.int32)
    else:
        labels = np.zeros(batch_size, np.int32)
        labels[: len(rows)] = encoded.labels[rows]
    valid = np.zeros(batch_size, bool)
    valid[: len(rows)] = True
    index = np.full(batch_size, -1, np.int32)
    index[: len(rows)] = rows
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        token_type_ids=token_type_ids,
        labels=labels,
        valid=valid,
        index=index,
    )
