"""`python -m elang_jax.benchmarks`: the same suite as `elang-jax bench`."""

import sys

from elang_jax.benchmarks._cli import main

sys.exit(main())
