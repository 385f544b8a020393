"""Where every parameter goes: logical axes per parameter path, one rules table to mesh axes.

Two tables, both data (MaxText's `logical_axis_rules`, resolved without model metadata):
  * `PARAM_AXES`: a regular expression over an `nnx.state` path ("encoder/layers/0/
    attention/query/kernel", layer numbers included) -> the logical name of each dimension.
    Every parameter of every backbone (BERT, RoBERTa, MiniLM, MPNet with its relative bias,
    T5, GPT-2, their heads, exit heads, MoE experts and routers) matches exactly one row
    kind; a parameter that matches none is an error (`UnknownParameterError`), never
    silently replicated, so a new layer cannot slip through unplaced.
  * `LOGICAL_AXIS_RULES`: logical name -> mesh axes (None: replicated along that dimension).

The layout is Megatron's: Q/K/V and FFN-in split by output columns over "model", the
attention output and FFN-out by input rows, so each block needs one reduction over "model"
(GSPMD inserts it under plain `jax.jit`). A dimension the mesh axes do not divide (a
99-token vocabulary over 2 devices) stays replicated: `jax` refuses uneven shards, and a
partial placement of the others is still correct.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from elang_jax.sharding._mesh import BATCH_AXES, EXPERT, MODEL, mesh_shape

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

# Logical axis names.
BATCH = "batch"
EMBED = "embed"  # the model width d
HEADS = "heads"  # the fused (heads x head width) dimension of Q/K/V outputs, O inputs
MLP = "mlp"  # the dense FFN's hidden width f
VOCAB = "vocab"
EXP = "exp"  # MoE experts
EXP_MLP = "exp_mlp"  # one expert's hidden width
ROUTER = "router"  # router outputs (one score per expert: small, replicated)
POSITIONS = "positions"  # absolute position tables
TOKEN_TYPES = "token_types"
REL_BUCKETS = "rel_buckets"  # relative-position buckets (T5, MPNet)
REL_HEADS = "rel_heads"  # the relative bias's per-head column (h, not h x k)
LABELS = "labels"  # classifier outputs
EMBED_OUT = "embed_out"  # d x d heads (pooler, transform): replicated, they are small
LAYER_MIX = "layer_mix"  # exit-head layer mixing weights

LOGICAL_AXIS_RULES: tuple[tuple[str, MeshAxes], ...] = (
    (BATCH, BATCH_AXES),
    (EMBED, None),
    (HEADS, MODEL),
    (MLP, MODEL),
    (VOCAB, MODEL),
    (EXP, EXPERT),
    (EXP_MLP, None),
    (ROUTER, None),
    (POSITIONS, None),
    (TOKEN_TYPES, None),
    (REL_BUCKETS, None),
    (REL_HEADS, None),
    (LABELS, None),
    (EMBED_OUT, None),
    (LAYER_MIX, None),
)

_ANY = r"(?:.+/)?"  # any prefix of path components (or none)
_ATTN = r"(?:attention|cross_attention)"
_NORM = r"(?:\w*norm|ln_\w+|ln_f)"
# a MoE layer's own parameters: under `layer.ffn`, in an `ExpertParallelFFN` (`moe/`), or
# a bare `MoEFeedForward` (no prefix)
_MOE = r"(?:ffn/|ffn/moe/|moe/)?"

# (path regex, logical axes per dimension). Tried in order; the first full match wins.
PARAM_AXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # embeddings (BERT family, GPT-2, T5's shared table)
    (_ANY + r"(?:embeddings/word|wte|shared)/embedding", (VOCAB, EMBED)),
    (_ANY + r"(?:embeddings/position|wpe)/embedding", (POSITIONS, EMBED)),
    (_ANY + r"embeddings/token_type/embedding", (TOKEN_TYPES, EMBED)),
    # T5 and MPNet relative position bias: [buckets h]
    (_ANY + r"relative_bias/embedding", (REL_BUCKETS, REL_HEADS)),
    # attention (self and T5's cross): Megatron columns in, rows out
    (_ANY + _ATTN + r"/(?:query|key|value)/kernel", (EMBED, HEADS)),
    (_ANY + _ATTN + r"/(?:query|key|value)/bias", (HEADS,)),
    (_ANY + _ATTN + r"/output/kernel", (HEADS, EMBED)),
    (_ANY + _ATTN + r"/output/bias", (EMBED,)),
    # dense FFN (gated or not)
    (_ANY + r"ffn/(?:w_in|w_gate)/kernel", (EMBED, MLP)),
    (_ANY + r"ffn/(?:w_in|w_gate)/bias", (MLP,)),
    (_ANY + r"ffn/w_out/kernel", (MLP, EMBED)),
    (_ANY + r"ffn/w_out/bias", (EMBED,)),
    # MoE FFN (`MoEFeedForward`): experts over "expert"
    (_ANY + _MOE + r"w_in", (EXP, EMBED, EXP_MLP)),
    (_ANY + _MOE + r"b_in", (EXP, EXP_MLP)),
    (_ANY + _MOE + r"w_out", (EXP, EXP_MLP, EMBED)),
    (_ANY + _MOE + r"b_out", (EMBED,)),
    (_ANY + _MOE + r"(?:router_w1|router_w)", (EMBED, ROUTER)),
    (_ANY + _MOE + r"router_w2", (ROUTER, ROUTER)),
    # layer norms (LayerNorm scale and bias, T5's RMS scale)
    (_ANY + _NORM + r"/(?:scale|bias)", (EMBED,)),
    # heads: pooler, classifiers (BERT / RoBERTa style, exit heads, E-LANG energy head)
    (_ANY + r"(?:pooler|head/dense|transform|hidden)/kernel", (EMBED, EMBED_OUT)),
    (_ANY + r"(?:pooler|head/dense|transform|hidden)/bias", (EMBED_OUT,)),
    (_ANY + r"(?:head/out|heads/\d+/classifier|out)/kernel", (EMBED, LABELS)),
    (_ANY + r"(?:head/out|heads/\d+/classifier|out)/bias", (LABELS,)),
    (_ANY + r"mix", (LAYER_MIX, LAYER_MIX)),
    # LM heads: T5's untied head [d v], the masked-LM output bias [v]
    (_ANY + r"lm_head/kernel", (EMBED, VOCAB)),
    (r"bias", (VOCAB,)),
)

_COMPILED = tuple((re.compile(p), axes) for p, axes in PARAM_AXES)


class UnknownParameterError(ValueError):
    """A parameter path that no row of `PARAM_AXES` matches (or matches with the wrong rank)."""


def path_string(path: Sequence[Any]) -> str:
    """An `nnx` state path as "a/b/0/c"."""
    return "/".join(str(p) for p in path)


def axes_for_path(path: str, ndim: int) -> tuple[str, ...]:
    """The logical axes of the parameter at `path` with `ndim` dimensions.

    Raises:
      UnknownParameterError: no row matches, or the matching row has another rank.
    """
    for pattern, axes in _COMPILED:
        if pattern.fullmatch(path):
            if len(axes) != ndim:
                raise UnknownParameterError(
                    f"parameter {path!r} has {ndim} dimensions but its row in PARAM_AXES "
                    f"({pattern.pattern!r}) names {len(axes)}: {axes}"
                )
            return axes
    raise UnknownParameterError(
        f"no logical axes for parameter {path!r} ({ndim} dimensions): add a row to "
        "elang_jax.sharding PARAM_AXES"
    )


def logical_axes(model: nnx.Module) -> nnx.State:
    """The logical axes (a tuple of names) of every `nnx.Param` of `model`, as a state tree."""
    params = nnx.state(model, nnx.Param)
    flat = [
        (path, axes_for_path(path_string(path), len(var.shape)))
        for path, var in nnx.to_flat_state(params)
    ]
    return nnx.from_flat_state(flat)


def resolve_spec(
    axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """The `PartitionSpec` of an array of `shape` whose dimensions carry logical `axes`.

    Each logical name maps to mesh axes through `rules` (an unknown name is an error). A
    dimension that its mesh axes do not divide stays replicated, and a mesh axis is used by
    at most one dimension (the first that claims it).
    """
    table: Mapping[str, MeshAxes] = dict(rules)
    sizes = mesh_shape(mesh)
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for name, dim in zip(axes, shape, strict=True):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; rules name {sorted(table)}")
        target = table[name]
        names = () if target is None else (target,) if isinstance(target, str) else target
        # size-1 axes shard nothing: leave them out so specs read plainly
        names = tuple(a for a in names if a in mesh.axis_names and sizes[a] > 1 and a not in used)
        count = 1
        for a in names:
            count *= sizes[a]
        if not names or dim % count:
            spec.append(None)
            continue
        used.update(names)
        spec.append(names[0] if len(names) == 1 else names)
    return PartitionSpec(*spec)


def param_shardings(
    model: nnx.Module,
    mesh: Mesh,
    rules: Rules = LOGICAL_AXIS_RULES,
    *,
    min_elements: int = 0,
) -> nnx.State:
    """A `NamedSharding` for every variable of `model` (the tree of `nnx.state(model)`).

    Parameters are placed by `PARAM_AXES` and `rules`; other variables (temperatures,
    RNG counters, caches) are replicated. Works on an abstract model (`nnx.eval_shape`).
    The result is a pytree prefix of `nnx.state(model)`: `jax.device_put` and `jax.jit`'s
    `in_shardings` / `out_shardings` take it as it is.

    Args:
      min_elements: parameters with fewer elements stay replicated (splitting a bias or a
        layer norm saves little memory and adds communication).
    """
    return state_shardings(nnx.state(model), mesh, rules, min_elements=min_elements)


def state_shardings(
    state: nnx.State,
    mesh: Mesh,
    rules: Rules = LOGICAL_AXIS_RULES,
    *,
    min_elements: int = 0,
) -> nnx.State:
    """`param_shardings` for a state tree (e.g. the parameters from `nnx.split`)."""
    if min_elements < 0:
        raise ValueError(f"min_elements must be >= 0, got {min_elements=}")

    def place(path: tuple[Any, ...], var: Any) -> Any:
        if not isinstance(var, nnx.Variable):  # a bare array in a plain pytree
            return NamedSharding(mesh, PartitionSpec())
        shape = tuple(getattr(var, "shape", ()))
        spec = PartitionSpec()
        if isinstance(var, nnx.Param):
            axes = axes_for_path(path_string(key_names(path)), len(shape))
            if math.prod(shape) >= min_elements:
                spec = resolve_spec(axes, shape, mesh, rules)
        return var.replace(NamedSharding(mesh, spec))

    # Variables holding shardings: the same pytree as `state`, leaf for leaf.
    return jax.tree_util.tree_map_with_path(
        place, state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def key_names(path: Sequence[Any]) -> tuple[Any, ...]:
    """A pytree key path as plain names, without the trailing `.value` of a Variable."""
    keys = tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)
    return keys[:-1] if keys and keys[-1] == "value" else keys


def shard_model(
    model: nnx.Module,
    mesh: Mesh,
    rules: Rules = LOGICAL_AXIS_RULES,
    *,
    min_elements: int = 0,
) -> nnx.Module:
    """Moves every variable of `model` onto `mesh`, in place, and returns `model`.

    Each parameter becomes a global array in its `param_shardings` placement; jitted code
    then runs tensor / expert parallel wherever the rules split a parameter, with no change
    to the model's code. Call `jax.device_put` on the inputs with `batch_sharding` for
    data parallelism.
    """
    state = nnx.state(model)
    shardings = param_shardings(model, mesh, rules, min_elements=min_elements)
    nnx.update(model, jax.device_put(state, shardings))
    return model


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Rules = LOGICAL_AXIS_RULES) -> NamedSharding:
    """Rows over the batch axes (data, expert), other dimensions replicated.

    The rows must divide evenly: `jax.device_put` raises otherwise.
    """
    if ndim < 1:
        raise ValueError(f"a batch has at least one dimension (rows), got {ndim=}")
    target = dict(rules)[BATCH]
    names = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    names = tuple(a for a in names if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(names or None, *([None] * (ndim - 1))))
