"""Reading and writing Hugging Face checkpoint directories (tensors and config.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"]


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A local checkpoint directory, downloading a hub repository if `path_or_name` is not one.

    Hub downloads need the network; the error says so when it is unreachable.
    """
    path = Path(path_or_name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; expected a checkpoint directory")
    name = str(path_or_name)
    if name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"checkpoint directory {name} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=_HUB_PATTERNS))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise FileNotFoundError(
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face "
            f"hub ({type(e).__name__}: {e}). Pass a local directory holding config.json and "
            f"model.safetensors."
        ) from e


def read_json(file: Path) -> dict:
    """A JSON object from `file`; a ValueError naming the file if it is not one."""
    try:
        out = json.loads(file.read_text())
    except UnicodeDecodeError as e:
        raise ValueError(f"{file} is not a JSON text file ({e})") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(out, dict):
        raise ValueError(f"{file} must hold a JSON object, got {type(out).__name__}")
    return out


def read_config(path: Path) -> dict:
    file = path / CONFIG
    if not file.exists():
        raise FileNotFoundError(f"{path} has no {CONFIG}; found {sorted(os.listdir(path))}")
    return read_json(file)


def _read(reader, file: Path) -> dict[str, np.ndarray]:
    """`reader(file)`, with any failure to parse it reported as a ValueError naming it."""
    if not file.exists():
        raise FileNotFoundError(f"{file} does not exist (named by the checkpoint's index)")
    try:
        return reader(file)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 - the readers raise library-specific types
        raise ValueError(
            f"{file} could not be read as a checkpoint ({type(e).__name__}: {e}); the file is "
            "corrupt or truncated"
        ) from e


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    # numpy has no bfloat16; the flax framework returns ml_dtypes-backed arrays for it.
    with safe_open(str(file), framework="flax") as f:
        return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}  # noqa: SIM118


def _read_torch(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{file} is a PyTorch pickle; reading it needs torch (pip install 'elang-jax[test]'), "
            "or convert it to model.safetensors"
        ) from e
    state = torch.load(file, map_location="cpu", weights_only=True)
    out = {}
    for k, v in state.items():
        v = v.detach()
        if v.dtype == torch.bfloat16:
            import ml_dtypes

            out[k] = v.float().numpy().astype(ml_dtypes.bfloat16)
        else:
            out[k] = v.numpy()
    return out


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory: safetensors (single or sharded) first, then
    PyTorch pickles when torch is installed."""
    for single, index, reader in (
        (SAFETENSORS, SAFETENSORS_INDEX, _read_safetensors),
        (TORCH_BIN, TORCH_BIN_INDEX, _read_torch),
    ):
        if (path / single).exists():
            return _read(reader, path / single)
        if (path / index).exists():
            weight_map = read_json(path / index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{path / index} has no 'weight_map' object")
            shards = sorted(set(weight_map.values()))
            out: dict[str, np.ndarray] = {}
            for shard in shards:
                out.update(_read(reader, path / shard))
            return out
    raise FileNotFoundError(
        f"{path} holds no weights: expected {SAFETENSORS} or {TORCH_BIN} (or their sharded "
        f"index); found {sorted(os.listdir(path))}"
    )


def write_tensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()},
        str(path / SAFETENSORS),
        metadata={"format": "pt"},
    )
