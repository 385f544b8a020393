"""MoEfication of a dense model: collect FFN inputs, split FFNs into experts, train routers.

Shape vocabulary: N tokens, d width, e experts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float

from elang_jax.models._common import FeedForward
from elang_jax.moe._config import MoEConfig, RouterKind
from elang_jax.moe._layer import MoEFeedForward
from elang_jax.moe._split import SplitMethod, split

log = logging.getLogger(__name__)


@runtime_checkable
class FfnSite(Protocol):
    """A module that owns an `ffn` (a backbone layer): what MoEfication replaces."""

    ffn: nnx.Module


def ffn_sites(model: nnx.Module) -> list[FfnSite]:
    """The modules that own an `ffn` attribute (the backbone layers), in graph order."""
    # isinstance(m, FfnSite) is hasattr(m, "ffn").
    sites: list[FfnSite] = [
        m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Module) and isinstance(m, FfnSite)
    ]
    if not sites:
        raise ValueError(f"{type(model).__name__} has no layer with an `ffn` to MoEfy")
    return sites


class _Recorder(nnx.Module):
    """Wraps an FFN and sows its input, so a forward pass reveals every FFN's inputs."""

    def __init__(self, ffn: nnx.Module):
        self.inner = ffn

    def __call__(self, x):
        self.sow(nnx.Intermediate, "ffn_input", x)
        return self.inner(x)


@functools.partial(jax.jit, static_argnums=0)
def _record(graphdef, state, batch):
    model = nnx.merge(graphdef, state)
    model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    # sow stores a tuple of the values sown; each recorder is called once per forward
    return [_sown_input(site.ffn) for site in ffn_sites(model)]


def _sown_input(recorder: nnx.Module) -> jax.Array:
    # `sow` creates the attribute during the forward pass, out of the type checker's sight.
    return recorder.ffn_input.get_value()[0]  # pyright: ignore[reportAttributeAccessIssue]


def collect_ffn_inputs(
    model: nnx.Module, batches: Iterable[Any], max_tokens: int | None = None, seed: int = 0
) -> list[np.ndarray]:
    """Hidden states entering every FFN on real data, padding tokens removed.

    Args:
      model: a classifier or encoder called as `model(input_ids, attention_mask,
        token_type_ids)`, with `ffn` layers (left unchanged).
      batches: `elang_jax.data.Batch`es (input_ids, attention_mask, token_type_ids, valid).
      max_tokens: keep at most this many tokens per layer (a random subset); None: all.
      seed: the subset's seed.

    Returns:
      One [N d] float32 array per FFN, in layer order.
    """
    sites = ffn_sites(model)
    originals = [s.ffn for s in sites]
    for s in sites:
        s.ffn = _Recorder(s.ffn)
    try:
        graphdef, state = nnx.split(model)
        per_layer: list[list[np.ndarray]] = [[] for _ in sites]
        for batch in batches:
            arrays = {
                "input_ids": jnp.asarray(batch.input_ids),
                "attention_mask": jnp.asarray(batch.attention_mask),
                "token_type_ids": jnp.asarray(batch.token_type_ids),
            }
            keep = np.asarray(batch.attention_mask, bool) & np.asarray(batch.valid)[:, None]
            for i, h in enumerate(_record(graphdef, state, arrays)):
                per_layer[i].append(np.asarray(h, np.float32)[keep])
    finally:
        for s, f in zip(sites, originals, strict=True):
            s.ffn = f
    out = [np.concatenate(h) for h in per_layer]
    if max_tokens is not None and out[0].shape[0] > max_tokens:
        rows = np.random.default_rng(seed).choice(out[0].shape[0], max_tokens, replace=False)
        out = [h[np.sort(rows)] for h in out]
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class RouterTrainConfig:
    """Training of MoEfication's MLP router (per FFN, on collected hidden states).

    Attributes:
      epochs: passes over the training tokens.
      batch_size: tokens per step.
      learning_rate: Adam learning rate.
      val_fraction: tokens held out to pick the best epoch.
      seed: shuffling and split seed.
    """

    epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 1e-2
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {name}={getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate=}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction=}")


def captured_mass(
    scores: Float[Array, "n e"], mass: Float[Array, "n e"], top_k: int
) -> Float[Array, ""]:
    """Share of the true positive activation mass held by the top-k experts of `scores`."""
    _, idx = jax.lax.top_k(scores, top_k)
    kept = jnp.take_along_axis(mass, idx, axis=-1).sum(-1)
    return kept.sum() / jnp.maximum(mass.sum(), 1e-12)


def train_mlp_router(
    moe: MoEFeedForward, inputs: np.ndarray, config: RouterTrainConfig = RouterTrainConfig()
) -> dict[str, float]:
    """Trains `moe`'s MLP router to predict each expert's share of positive activation.

    Target: each expert's positive activation mass divided by the token's largest one (a soft
    multi-label target in [0, 1]), fitted with sigmoid cross-entropy and Adam. The epoch with
    the best held-out captured mass (see `captured_mass`) is kept.

    Returns:
      `{"captured_mass": best held-out value, "oracle_mass": the oracle's, "epoch": ...}`.
    """
    if moe.config.router is not RouterKind.MLP:
        raise ValueError(f"train_mlp_router needs an MLP router, got {moe.config.router}")
    assert moe.router_w1 is not None and moe.router_w2 is not None  # an MLP router has both
    x = jnp.asarray(inputs, jnp.float32)
    if x.ndim != 2 or x.shape[1] != moe.d_model:
        raise ValueError(f"inputs must have shape [N, {moe.d_model}], got {x.shape}")
    # [N e] in chunks: the dense activations of all tokens at once would be large
    mass = jnp.concatenate([moe.activation_mass(c) for c in jnp.array_split(x, -(-len(x) // 4096))])
    target = mass / jnp.maximum(mass.max(-1, keepdims=True), 1e-12)
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(x.shape[0])
    n_val = max(1, int(config.val_fraction * x.shape[0]))
    val, tr = perm[:n_val], perm[n_val:]
    steps = max(1, len(tr) // config.batch_size)
    x_hat = x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)
    params = {"w1": moe.router_w1[...], "w2": moe.router_w2[...]}
    opt = optax.adam(config.learning_rate)
    opt_state = opt.init(params)
    k = moe.config.top_k

    def logits_fn(p, xb):
        return jnp.tanh(xb @ p["w1"]) @ p["w2"]

    def loss_fn(p, xb, yb):
        return optax.sigmoid_binary_cross_entropy(logits_fn(p, xb), yb).mean()

    # The data are arguments, not closed-over constants: XLA would otherwise constant-fold
    # gathers from them at compile time (seconds per layer).
    @jax.jit
    def epoch(p, s, order, x_hat, target, x_val, mass_val):
        def step(carry, rows):
            p, s = carry
            grads = jax.grad(loss_fn)(p, x_hat[rows], target[rows])
            updates, s = opt.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), None

        # [steps*batch] -> [steps batch]
        (p, s), _ = jax.lax.scan(step, (p, s), order.reshape(steps, config.batch_size))
        return p, s, captured_mass(logits_fn(p, x_val), mass_val, k)

    best = (captured_mass(logits_fn(params, x_hat[val]), mass[val], k), params, 0)
    for e in range(config.epochs):
        order = jnp.asarray(rng.permutation(tr)[: steps * config.batch_size])
        params, opt_state, score = epoch(
            params, opt_state, order, x_hat, target, x_hat[val], mass[val]
        )
        if score > best[0]:
            best = (score, params, e + 1)
    moe.router_w1[...] = best[1]["w1"]
    moe.router_w2[...] = best[1]["w2"]
    oracle = captured_mass(mass[val], mass[val], k)
    return {"captured_mass": float(best[0]), "oracle_mass": float(oracle), "epoch": best[2]}


def moefy(
    model: nnx.Module,
    config: MoEConfig,
    *,
    method: SplitMethod | str = SplitMethod.KMEANS,
    ffn_inputs: Sequence[np.ndarray] | None = None,
    router_training: RouterTrainConfig = RouterTrainConfig(),
    seed: int = 0,
    copy: bool = False,
) -> tuple[nnx.Module, list[Mapping[str, Any]]]:
    """Converts every dense `layer.ffn` of `model` into a `MoEFeedForward` (MoEfication).

    In place by default: the layers' `ffn` attributes are replaced and the same model is
    returned. With `copy=True` the model is cloned first and left untouched.

    Args:
      model: any model whose layers own a non-gated `FeedForward` as `ffn` (BERT, MiniLM,
        RoBERTa; ReLU models work best, GELU ones approximately).
      config: the MoE layer config (E, k, impl, router ...); its `gate` should be NONE so
        that k = E reproduces the dense model.
      method: how neurons are split into experts (`SplitMethod`).
      ffn_inputs: hidden states entering each FFN on real data (`collect_ffn_inputs`): one
        [N d] array per layer. Needed by the co-activation split and the MLP router.
      router_training: how the MLP routers are trained.
      seed: split seed.
      copy: convert a clone and leave `model` unchanged.

    Returns:
      (the converted model, one dict per layer with the router's held-out captured mass).
    """
    if not isinstance(config, MoEConfig):
        raise TypeError(f"config must be a MoEConfig, got {type(config)}")
    method = SplitMethod(method)
    if copy:
        model = nnx.clone(model)
    sites = ffn_sites(model)
    needs_inputs = method is SplitMethod.COACTIVATION or config.router is RouterKind.MLP
    if needs_inputs and ffn_inputs is None:
        raise ValueError(
            f"{method=} with router={RouterKind(config.router).value} needs ffn_inputs: "
            "hidden states from real data (see collect_ffn_inputs)"
        )
    if ffn_inputs is not None and len(ffn_inputs) != len(sites):
        raise ValueError(f"ffn_inputs has {len(ffn_inputs)} layers, the model {len(sites)}")
    reports = []
    for i, site in enumerate(sites):
        ffn = site.ffn
        if not isinstance(ffn, FeedForward):
            raise TypeError(f"layer {i}: ffn is a {type(ffn).__name__}, not a dense FeedForward")
        w_in = np.asarray(ffn.w_in.kernel[...])
        active = None
        if method is SplitMethod.COACTIVATION:
            assert ffn_inputs is not None  # checked above (needs_inputs)
            h = jnp.asarray(ffn_inputs[i]) @ ffn.w_in.kernel[...]
            if ffn.w_in.bias is not None:
                h = h + ffn.w_in.bias[...][None, :]  # [N f] + [1 f]
            active = np.asarray(h > 0)
        partition = split(method, config.num_experts, w_in, active, seed=seed + i)
        moe = MoEFeedForward.from_dense(ffn, config, partition, rngs=nnx.Rngs(seed + i))
        report: dict[str, Any] = {"layer": i}
        if config.router is RouterKind.MLP:
            assert ffn_inputs is not None  # checked above (needs_inputs)
            report.update(train_mlp_router(moe, ffn_inputs[i], router_training))
        site.ffn = moe
        reports.append(report)
        log.info("moefy layer %d: %s", i, report)
    return model, reports
