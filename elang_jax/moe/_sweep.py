"""A MoEfication sweep: expert counts x split methods x active fractions, each MoEfied copy
scored against the dense classifier.

For each expert count and split method, `moefy_sweep` MoEfies a copy of the model (split
neurons, train one MLP router per layer on FFN inputs collected once), optionally
fine-tunes it briefly with the routers frozen (`calibrate_moefied`), and evaluates it at
each active fraction. The router's best epoch is picked at the first active fraction; other
fractions reuse the router. `moefy_glue` loads a GLUE classifier and its data and runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flax import nnx

from elang_jax import data, training
from elang_jax.hf import from_pretrained
from elang_jax.moe._calibrate import calibrate_moefied
from elang_jax.moe._config import MoEConfig, MoEImpl, RouterKind
from elang_jax.moe._moefy import RouterTrainConfig, collect_ffn_inputs, ffn_sites, moefy
from elang_jax.moe._split import SplitMethod


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepConfig:
    """What a MoEfication sweep tries.

    Attributes:
      experts: expert counts E.
      active: active fractions; each gives k = max(1, round(a * E)) experts per token.
      methods: split methods (`SplitMethod` or their values).
      router: the router kind (`RouterKind` or its value).
      router_epochs: MLP router training epochs.
      router_batch_size: tokens per MLP router training step (at most the tokens left after
        the router's validation share).
      impl: the MoE implementation evaluated (`MoEImpl` or its value).
      max_tokens: FFN inputs kept per layer for splitting and router training.
      calibrate_steps: after MoEfication, fine-tune this many steps with routers frozen
        (0: none).
      calibrate_batch_size: rows per fine-tuning batch.
      eval_capacity_factor: also evaluate with this capacity factor (overflow dropped, as in
        the fast path); None or 0: not.
      batch_size: rows per batch when collecting FFN inputs and evaluating.
      buckets: padded lengths a batch may have.
      seed: split, router, sampling and dropout seed.
    """

    experts: tuple[int, ...] = (8, 16)
    active: tuple[float, ...] = (0.25, 0.125)
    methods: tuple[SplitMethod | str, ...] = tuple(SplitMethod)
    router: RouterKind | str = RouterKind.MLP
    router_epochs: int = 20
    router_batch_size: int = 512
    impl: MoEImpl | str = MoEImpl.CAPACITY
    max_tokens: int = 40000
    calibrate_steps: int = 0
    calibrate_batch_size: int = 32
    eval_capacity_factor: float | None = None
    batch_size: int = 64
    buckets: tuple[int, ...] = (8, 16, 24, 32, 48, 64)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "experts", tuple(self.experts))
        object.__setattr__(self, "active", tuple(self.active))
        object.__setattr__(self, "buckets", tuple(self.buckets))
        for name, enum_type in (("router", RouterKind), ("impl", MoEImpl)):
            value = getattr(self, name)
            try:
                object.__setattr__(self, name, enum_type(value))
            except ValueError:
                raise ValueError(
                    f"{name} must be one of {[v.value for v in enum_type]}, got {value!r}"
                ) from None
        try:
            object.__setattr__(self, "methods", tuple(SplitMethod(m) for m in self.methods))
        except ValueError:
            raise ValueError(
                f"methods must be among {[v.value for v in SplitMethod]}, got {self.methods=}"
            ) from None
        for name in ("experts", "active", "methods", "buckets"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty, got {name}={getattr(self, name)!r}")
        if any(e < 1 for e in self.experts):
            raise ValueError(f"expert counts must be positive, got {self.experts=}")
        if any(not 0.0 < a <= 1.0 for a in self.active):
            raise ValueError(f"active fractions must lie in (0, 1], got {self.active=}")
        for name in (
            "router_epochs",
            "router_batch_size",
            "max_tokens",
            "calibrate_batch_size",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {name}={getattr(self, name)}")
        if self.calibrate_steps < 0:
            raise ValueError(f"calibrate_steps must be >= 0, got {self.calibrate_steps=}")

    def top_ks(self, num_experts: int) -> list[int]:
        """The experts run per token at each active fraction, for E = `num_experts`."""
        return [max(1, round(a * num_experts)) for a in self.active]


def moefy_sweep(
    model: nnx.Module,
    train: data.Encoded,
    dev: data.Encoded,
    config: SweepConfig,
    *,
    calibration: data.Encoded | None = None,
    finetune: training.FinetuneConfig | None = None,
    record: Mapping[str, Any] | None = None,
    log: Callable[[str], Any] = lambda _: None,
) -> dict[str, Any]:
    """MoEfies copies of a dense classifier over `config`'s grid and scores each on `dev`.

    Args:
      model: a dense sequence classifier (left unchanged).
      train: examples whose hidden states entering every FFN split neurons and train the
        routers.
      dev: labelled examples every model is scored on (accuracy).
      config: the grid and its settings.
      calibration: labelled examples for the frozen-router fine-tune (needed when
        `config.calibrate_steps` > 0; batches reshuffled the same way for every run).
      finetune: the fine-tune's optimizer settings (same condition).
      record: stored as `args` in the result (None: `config` as a dict).
      log: called with a line per step of progress.

    Returns:
      {"dense_accuracy", "args", "runs": one dict per (E, method, k), "total_s"}.
    """
    if config.calibrate_steps and (calibration is None or finetune is None):
        raise ValueError(
            f"calibrate_steps={config.calibrate_steps} needs calibration examples and a "
            "finetune config"
        )
    buckets = data.LengthBuckets(config.buckets)
    bs = config.batch_size
    t0 = time.time()
    dense = training.evaluate(model, dev, bs, buckets)["accuracy"]
    batches = data.iterate_batches(train, bs, buckets, shuffle=False, sort_by_length=True)
    inputs = collect_ffn_inputs(model, batches, max_tokens=config.max_tokens, seed=config.seed)
    log(f"dense dev accuracy {dense:.4f}; FFN inputs {inputs[0].shape} per layer")
    if record is None:
        record = dataclasses.asdict(config)
    results: dict[str, Any] = {"dense_accuracy": dense, "args": dict(record), "runs": []}
    for num_experts in config.experts:
        for method in config.methods:
            ks = config.top_ks(num_experts)
            moe_config = MoEConfig(
                num_experts=num_experts, top_k=ks[0], impl=config.impl, router=config.router
            )
            t = time.time()
            moefied, reports = moefy(
                model,
                moe_config,
                method=method,
                ffn_inputs=inputs,
                router_training=RouterTrainConfig(
                    epochs=config.router_epochs,
                    batch_size=config.router_batch_size,
                    seed=config.seed,
                ),
                seed=config.seed,
                copy=True,
            )
            losses = []
            if config.calibrate_steps:
                assert calibration is not None and finetune is not None
                # routing as used at the first active fraction; other fractions reuse it
                ft_batches = data.iterate_batches(
                    calibration,
                    config.calibrate_batch_size,
                    buckets,
                    shuffle=True,
                    seed=config.seed,
                )
                losses = calibrate_moefied(
                    moefied, ft_batches, config.calibrate_steps, finetune, seed=config.seed
                )
            build_s = time.time() - t
            for k in ks:
                acc, acc_cf = _score(moefied, moe_config, k, dev, config, buckets)
                run = {
                    "num_experts": num_experts,
                    "top_k": k,
                    "active": k / num_experts,
                    "method": method,
                    "router": config.router,
                    "accuracy": acc,
                    "relative": acc / dense,
                    "capacity_factor": config.eval_capacity_factor,
                    "accuracy_with_capacity_factor": acc_cf,
                    "build_s": round(build_s, 1),
                    "calibrate_steps": config.calibrate_steps,
                    "calibrate_loss_last50": float(np.mean(losses[-50:])) if losses else None,
                    "captured_mass": [r.get("captured_mass") for r in reports],
                    "oracle_mass": [r.get("oracle_mass") for r in reports],
                }
                results["runs"].append(run)
                log(
                    f"E={num_experts:3d} k={k:2d} ({k / num_experts:6.2%}) {method:12s} "
                    f"acc {acc:.4f} ({acc / dense:.2%} of dense) build {build_s:.0f}s "
                    f"router mass L0 {run['captured_mass'][0]}"
                )
    results["total_s"] = round(time.time() - t0, 1)
    return results


def _score(
    moefied: nnx.Module,
    moe_config: MoEConfig,
    k: int,
    dev: data.Encoded,
    config: SweepConfig,
    buckets: data.LengthBuckets,
) -> tuple[float, float | None]:
    """Dev accuracy with k experts per token, dropless and (optionally) with the capacity
    factor; leaves `moefied`'s FFNs set to the last of the two."""
    for site in ffn_sites(moefied):
        site.ffn.config = moe_config.replace(top_k=k)  # pyright: ignore[reportAttributeAccessIssue]
    acc = training.evaluate(moefied, dev, config.batch_size, buckets)["accuracy"]
    acc_cf = None
    if config.eval_capacity_factor:
        for site in ffn_sites(moefied):
            site.ffn.config = moe_config.replace(  # pyright: ignore[reportAttributeAccessIssue]
                top_k=k, capacity_factor=config.eval_capacity_factor
            )
        acc_cf = training.evaluate(moefied, dev, config.batch_size, buckets)["accuracy"]
    return acc, acc_cf


def moefy_glue(
    model_dir: str | os.PathLike[str],
    config: SweepConfig,
    *,
    task: str = "sst2",
    train_sentences: int = 4000,
    calibrate_lr: float = 3e-5,
    json_path: str | os.PathLike[str] | None = None,
    record: Mapping[str, Any] | None = None,
    log: Callable[[str], Any] = lambda _: None,
) -> dict[str, Any]:
    """`moefy_sweep` on a fine-tuned GLUE classifier: FFN inputs from `train_sentences`
    random training sentences, scored on the dev split (64 tokens at most).

    Args:
      model_dir: a Hugging Face classifier directory (with its tokenizer).
      config: the sweep.
      task: the GLUE task.
      train_sentences: training sentences sampled (seed `config.seed`) for FFN inputs.
      calibrate_lr: the frozen-router fine-tune's learning rate (`sst2_minilm` otherwise),
        on `calibrate_batch_size * calibrate_steps + 64` other random training sentences.
      json_path: write the results here (None or empty: don't).
      record: stored as `args` in the results.
      log: called with a line per step of progress.

    Returns:
      `moefy_sweep`'s results.
    """
    model = from_pretrained(model_dir, head="sequence_classification")
    tokenizer = data.load_tokenizer(model_dir)
    vocab = model.config.vocab_size  # pyright: ignore[reportAttributeAccessIssue]

    def encode(examples: data.GlueExamples) -> data.Encoded:
        return data.encode_glue(tokenizer, examples, 64, truncate=True, vocab_size=vocab)

    dev = encode(data.read_glue(task, "dev"))
    full_train = data.read_glue(task, "train")
    rows = np.random.default_rng(config.seed).choice(len(full_train), train_sentences, False)
    train = encode(data.select_examples(full_train, np.sort(rows)))
    calibration = finetune = None
    if config.calibrate_steps:
        finetune = training.sst2_minilm(
            model_dir=model_dir, learning_rate=calibrate_lr, warmup_ratio=0.1
        )
        rows = np.random.default_rng(config.seed + 1).permutation(len(full_train))
        n = config.calibrate_batch_size * config.calibrate_steps + 64
        calibration = encode(data.select_examples(full_train, np.sort(rows[:n])))
    results = moefy_sweep(
        model,
        train,
        dev,
        config,
        calibration=calibration,
        finetune=finetune,
        record=record,
        log=log,
    )
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results
