"""The checks of eval/gpu_check.sh that are not the bench suite: the Pallas kernels compiled
and compared with their references, and the sharded serving steps over every local device.

    python eval/gpu_check.py kernels --json OUT.json [--dry-run]
    python eval/gpu_check.py sharded --json OUT.json [--dry-run]

`kernels`: the MoE dispatch/combine kernels (`elang_jax.kernels.moe_dispatch`) compiled
(interpret=False) on the accelerator, forward and gradient, against their jnp references,
at MoE-layer sizes, with their times next to the references' (median of 10 calls).
`sharded`: the cascade, exit, composed and seq2seq steps on a mesh of every local device
("data" over all of them; with 2+ devices also data x model), each against the one-device
step example by example, and the cascade's step time with and without the mesh.
`--dry-run` (or a CPU-only machine): tiny sizes, kernels in interpret mode, and the sharded
steps on forced CPU devices (set XLA_FLAGS before this starts; gpu_check.sh does).
Exits 1 if any comparison fails; the JSON holds every number.
"""

from __future__ import annotations

import argparse
import sys

from elang_jax import jsonio
from elang_jax.benchmarks._gpu_check import gpu_check


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=("kernels", "sharded"))
    p.add_argument("--json", required=True)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    import jax

    dry_run = args.dry_run or jax.default_backend() == "cpu"
    result = gpu_check(args.what, dry_run)
    result.update(dry_run=dry_run)  # gpu_check.sh times each step
    jsonio.write_json(result, args.json)
    print(f"{args.what}: ok={result['ok']} -> {args.json}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
