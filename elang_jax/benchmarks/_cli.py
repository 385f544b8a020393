"""The `elang-jax bench` command: its parser and what it runs.

    elang-jax bench [--only NAME ...] [--quick] [--rounds N] [--json PATH]
    python -m elang_jax.benchmarks [same arguments]

`add_bench_parser(subparsers)` adds the subcommand to the `elang-jax` parser and sets
`fn=run_bench`, the convention of `elang_jax.cli`. Nothing here imports JAX until a run
starts, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_JSON = "bench_results.json"
# Spelled out as in `BENCHMARK_NAMES`, so that building the parser imports no JAX (a test
# checks that the two agree).
NAMES = (
    "backbone",
    "compaction",
    "cascade",
    "exits",
    "moe",
    "acc",
    "compose",
    "speculative",
)

_HELP = """\
Times each adaptive-compute mechanism against its dense baseline on random weights (no
fine-tuning): the backbone forward, the compaction core, a Swift/Super cascade, the
multi-exit step, MoE FFNs, ACC token pruning, early exit composed with ACC, and GPT-2
self-speculative decoding against greedy decoding. Candidates run interleaved, round by
round, after a compile call each; median and min per candidate, the speed-up over the
baseline and the analytic FLOP speed-up where one applies. One table per benchmark, one JSON
file.
"""


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help=f"run only these benchmarks (of: {', '.join(NAMES)})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller shapes and 3 rounds: a 1-2 minute smoke run"
    )
    parser.add_argument("--rounds", type=int, help="timing rounds per candidate (median, min)")
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=DEFAULT_JSON,
        help=f"results file (default {DEFAULT_JSON})",
    )
    parser.add_argument("--batch-size", type=int, help="rows of every timed batch")
    parser.add_argument("--seq-len", type=int, help="padded length of every timed batch")
    parser.add_argument(
        "--weights",
        choices=("random", "auto", "pretrained"),
        help="encoder weights: random (default), or the cached all-MiniLM-L6-v2",
    )
    parser.add_argument(
        "--moe-impls", nargs="+", metavar="IMPL", help="MoEImpl values to time (default all)"
    )
    parser.add_argument(
        "--pallas-on-cpu", action="store_true", help="time the Pallas MoE in interpret mode on CPU"
    )
    parser.add_argument(
        "--capacity-factor",
        type=float,
        help="also time the CAPACITY MoE with this capacity factor (it drops overflow)",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Adds `bench` to an `add_subparsers()` object; the parsed args carry `fn=run_bench`."""
    parser = subparsers.add_parser(
        "bench",
        help="time every method's mechanism against its dense baseline (no fine-tuning)",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(fn=run_bench)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The standalone parser of `python -m elang_jax.benchmarks`."""
    parser = argparse.ArgumentParser(
        prog="python -m elang_jax.benchmarks",
        description=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(fn=run_bench)
    return parser


def bench_config(args: argparse.Namespace):
    """The `BenchConfig` of parsed arguments: the preset, then the overrides given."""
    from elang_jax.benchmarks._config import BenchConfig

    overrides = {}
    for name in ("rounds", "batch_size", "seq_len", "weights"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "moe_impls", None):
        overrides["moe_impls"] = tuple(args.moe_impls)
    if getattr(args, "capacity_factor", None) is not None:
        overrides["moe_capacity_factor"] = args.capacity_factor
    if getattr(args, "pallas_on_cpu", False):
        overrides["pallas_on_cpu"] = True
    preset = BenchConfig.quick if getattr(args, "quick", False) else BenchConfig.full
    return preset(**overrides)


def run_bench(args: argparse.Namespace) -> int:
    """Runs the suite for parsed arguments: tables on stdout, the JSON file at `args.json`.

    Returns the exit status: 0, or 2 for bad arguments (unknown benchmark, invalid sizes).
    """
    if getattr(args, "list", False):
        print("\n".join(NAMES))
        return 0
    from elang_jax.benchmarks._report import format_table, write_json
    from elang_jax.benchmarks._suite import resolve_names, run_benchmarks

    try:
        names = resolve_names(args.only)
        config = bench_config(args)
    except ValueError as e:
        print(f"elang-jax bench: error: {e}", file=sys.stderr)
        return 2

    def show(result) -> None:
        print(format_table(result), end="\n\n", flush=True)

    results = run_benchmarks(config, names, on_result=show)
    if args.json:
        write_json(results, args.json, config)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)
