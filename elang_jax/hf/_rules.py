"""Tensor-name rules between Hugging Face checkpoints and NNX state, and the generic
load/export engine that applies them.

A `Rule` ties one Hugging Face tensor to one or more NNX parameter paths, with the
conversion each way (PyTorch `Linear` weights are [out, in]; NNX kernels are [in, out]).
Every family (BERT, T5, GPT-2) only lists its rules; checking for missing, unexpected and
mis-shaped tensors happens here, once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Path = tuple[str | int, ...]


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model: lists every problem at once."""

    def __init__(
        self,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mis_shaped: Sequence[str] = (),
        source: str = "checkpoint",
        mis_typed: Sequence[str] = (),
    ):
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mis_shaped = list(mis_shaped)
        self.mis_typed = list(mis_typed)
        lines = [f"{source} does not match the model:"]
        if self.missing:
            lines.append(f"  missing tensors ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(
                f"  unexpected tensors ({len(self.unexpected)}): {', '.join(self.unexpected)}"
            )
        if self.mis_shaped:
            lines.append(
                f"  mis-shaped tensors ({len(self.mis_shaped)}): {', '.join(self.mis_shaped)}"
            )
        if self.mis_typed:
            lines.append(
                f"  mis-typed tensors ({len(self.mis_typed)}): {', '.join(self.mis_typed)}"
            )
        super().__init__("\n".join(lines))


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _transpose(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.T)


@dataclasses.dataclass(frozen=True)
class Rule:
    """One HF tensor <-> `len(paths)` NNX parameters.

    Attributes:
      hf: the tensor name in the Hugging Face state dict.
      paths: NNX state paths the tensor feeds.
      to_jax: HF array -> list of arrays, one per path.
      to_hf: list of arrays (one per path) -> HF array.
      optional: a head or buffer that may be absent (then initialised, and reported).
    """

    hf: str
    paths: tuple[Path, ...]
    to_jax: Callable[[np.ndarray], list[np.ndarray]]
    to_hf: Callable[[list[np.ndarray]], np.ndarray]
    optional: bool = False


def copy(hf: str, path: Path, *, transpose: bool = False, optional: bool = False) -> Rule:
    fwd = _transpose if transpose else _identity
    return Rule(hf, (path,), lambda x: [fwd(x)], lambda xs: fwd(xs[0]), optional)


def linear(hf_prefix: str, path: Path, *, bias: bool = True, optional: bool = False) -> list[Rule]:
    """A PyTorch nn.Linear ([out, in] weight) <-> an nnx.Linear ([in, out] kernel)."""
    rules = [copy(f"{hf_prefix}.weight", (*path, "kernel"), transpose=True, optional=optional)]
    if bias:
        rules.append(copy(f"{hf_prefix}.bias", (*path, "bias"), optional=optional))
    return rules


def conv1d(hf_prefix: str, path: Path) -> list[Rule]:
    """GPT-2's Conv1D already stores [in, out]."""
    return [
        copy(f"{hf_prefix}.weight", (*path, "kernel")),
        copy(f"{hf_prefix}.bias", (*path, "bias")),
    ]


def layer_norm(hf_prefix: str, path: Path, *, bias: bool = True, names=("weight", "bias")):
    rules = [copy(f"{hf_prefix}.{names[0]}", (*path, "scale"))]
    if bias:
        rules.append(copy(f"{hf_prefix}.{names[1]}", (*path, "bias")))
    return rules


def embedding(hf: str, path: Path, *, optional: bool = False) -> Rule:
    return copy(hf, (*path, "embedding"), optional=optional)


def split_rule(hf: str, paths: Sequence[Path], axis: int) -> Rule:
    """One HF tensor split evenly into several parameters (GPT-2's fused c_attn)."""
    n = len(paths)
    return Rule(
        hf,
        tuple(paths),
        lambda x: [np.ascontiguousarray(p) for p in np.split(x, n, axis=axis)],
        lambda xs: np.concatenate(xs, axis=axis),
    )


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `load_into` did beyond a one-to-one copy."""

    initialised: tuple[str, ...] = ()  # optional tensors absent from the checkpoint
    ignored: tuple[str, ...] = ()  # tensors matched by an ignore pattern


def _kind(dtype) -> str:
    """ "float", "int" or "bool" (bfloat16 counts as float; widths may differ)."""
    if jnp.issubdtype(dtype, jnp.floating):
        return "float"
    if jnp.issubdtype(dtype, jnp.bool_):
        return "bool"
    if jnp.issubdtype(dtype, jnp.integer):
        return "int"
    return np.dtype(dtype).name


def load_into(
    model: nnx.Module,
    tensors: dict[str, np.ndarray],
    rules: Iterable[Rule],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    ignore: Sequence[str] = (),
    source: str = "checkpoint",
    place: Callable[[Path, np.ndarray, nnx.Variable], jax.Array] | None = None,
) -> LoadReport:
    """Copies `tensors` into `model` in place following `rules`.

    Args:
      aliases: HF name -> other names the same tensor may be stored under (prefixless base
        checkpoints, tied copies). The first present name is used; the others are consumed.
      ignore: fnmatch patterns of tensors that are known not to belong to the model
        (buffers, other heads); anything else left over is an error.
      place: makes each converted tensor a device array (path, numpy value, the model's
        variable); None: `jnp.asarray` in the variable's dtype. Sharded loading
        (`elang_jax.sharding`) puts each tensor straight into its shard with it.

    Raises:
      CheckpointMismatchError listing every missing, unexpected, mis-shaped and mis-typed
      tensor (an integer or bool tensor for a float parameter, or the reverse; float widths
      such as float16 -> float32 convert).
    """
    aliases = aliases or {}
    state = nnx.state(model)
    flat = dict(nnx.to_flat_state(state))
    consumed: set[str] = set()
    missing, mis_shaped, mis_typed, initialised = [], [], [], []
    updates: dict[Path, np.ndarray] = {}
    for rule in rules:
        names = [rule.hf, *aliases.get(rule.hf, ())]
        present = [n for n in names if n in tensors]
        consumed.update(present)
        if not present:
            (initialised if rule.optional else missing).append(rule.hf)
            continue
        parts = rule.to_jax(np.asarray(tensors[present[0]]))
        for path, value in zip(rule.paths, parts, strict=True):
            if path not in flat:
                raise KeyError(f"rule for {rule.hf} names unknown model path {path}")
            want = tuple(flat[path].shape)
            if tuple(value.shape) != want:
                mis_shaped.append(f"{present[0]} (got {tuple(value.shape)}, model wants {want})")
                continue
            if _kind(value.dtype) != _kind(flat[path].dtype):
                # an int32 tensor for a float weight is a wrong or corrupt file, not a cast
                mis_typed.append(
                    f"{present[0]} (got {np.dtype(value.dtype).name}, model wants "
                    f"{np.dtype(flat[path].dtype).name})"
                )
                continue
            updates[path] = value
    ignored = [
        n for n in tensors if n not in consumed and any(fnmatch.fnmatch(n, p) for p in ignore)
    ]
    unexpected = sorted(set(tensors) - consumed - set(ignored))
    if missing or unexpected or mis_shaped or mis_typed:
        raise CheckpointMismatchError(missing, unexpected, mis_shaped, source, mis_typed)
    for path, value in updates.items():
        var = flat[path]
        if place is None:
            var[...] = jnp.asarray(value, dtype=var.dtype)
        else:
            var.set_value(place(path, value, var))
    nnx.update(model, nnx.from_flat_state(flat))
    return LoadReport(tuple(initialised), tuple(ignored))


def export_from(model: nnx.Module, rules: Iterable[Rule]) -> dict[str, np.ndarray]:
    """The inverse of `load_into`: a Hugging Face state dict (numpy, contiguous)."""
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    out = {}
    for rule in rules:
        parts = [np.asarray(flat[p][...]) for p in rule.paths]
        out[rule.hf] = np.ascontiguousarray(rule.to_hf(parts))
    return out
