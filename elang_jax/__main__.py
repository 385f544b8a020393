import sys

from elang_jax.cli import main

sys.exit(main())
