"""The `elang-jax` console command.

elang-jax convert SRC DST [--head HEAD]   # Hugging Face dir <-> elang_jax native dir
elang-jax info DIR                        # what a checkpoint directory holds
"""

from __future__ import annotations

import argparse
import sys


def _convert(args: argparse.Namespace) -> int:
    from elang_jax.hf import from_pretrained, save_pretrained
    from elang_jax.hf._native import is_native, load_native, save_native

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
