"""The compaction core: run costly work only on a data-dependent subset, with static shapes."""

from elang_jax.core._bucket_fit import (
    count_distribution,
    expected_rows,
    fit_buckets,
    fitted_fractions,
)
from elang_jax.core._compaction import (
    Packing,
    bucket_sizes,
    compact_apply,
    gather_rows,
    plan,
    scatter_rows,
    validate_buckets,
)
from elang_jax.core._stack import LayerFn, StackState, TokenSelector, full_counts, run_stack

__all__ = [
    "LayerFn",
    "Packing",
    "StackState",
    "TokenSelector",
    "full_counts",
    "run_stack",
    "bucket_sizes",
    "count_distribution",
    "expected_rows",
    "fit_buckets",
    "fitted_fractions",
    "compact_apply",
    "gather_rows",
    "plan",
    "scatter_rows",
    "validate_buckets",
]
