"""Backbone forward under `jit`: examples/s and achieved GFLOP/s against the device's matmul rate.

Every adaptive method saves time only by skipping work of this forward, so its throughput,
and how close it runs to the float32 matmul roofline, bound what the other benchmarks can
show. Other implementations of the same forward (PyTorch in eval/bench_backbone.py) join
as extra candidates built from the same model and inputs.

Shape vocabulary: b batch rows, t padded length, d width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from elang_jax.benchmarks._config import BenchConfig
from elang_jax.benchmarks._models import (
    Inputs,
    build_classifier,
    jit_module,
    pretrained_dir,
    random_inputs,
)
from elang_jax.benchmarks._result import BenchResult, make_result
from elang_jax.flops import encoder_flops
from elang_jax.models import BertModel
from elang_jax.timing import time_interleaved

BASELINE = "jax_jit"


@dataclasses.dataclass(frozen=True)
class BackboneSetup:
    """What an extra candidate is built from.

    Attributes:
      model: the encoder being timed.
      forward: the timed JAX call, `forward() -> (last hidden state [b t d], pooled [b d])`.
      inputs: its batch (input_ids, attention_mask, token_type_ids; [b t] int32).
      checkpoint: the Hugging Face directory the weights came from, or None (random).
    """

    model: BertModel
    forward: Callable[[], Any]
    inputs: Inputs
    checkpoint: Path | None


ExtraFactory = Callable[[BackboneSetup], Callable[[], Any]]


def matmul_gflops(n: int, rounds: int) -> float:
    """Measured float32 GFLOP/s of an [n n] x [n n] matmul through XLA on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    t = time_interleaved({"matmul": lambda: f(a)}, rounds)["matmul"]
    return 2 * n**3 / (t.min_ms * 1e-3) / 1e9


def bench_backbone(
    config: BenchConfig, *, extra: Mapping[str, ExtraFactory] | None = None
) -> BenchResult:
    """Times the jitted encoder forward at [batch_size, seq_len].

    Args:
      config: shapes, weights and rounds.
      extra: name -> factory of another implementation's zero-argument call on the same
        model and inputs (e.g. PyTorch); timed interleaved with the JAX forward. Its speed-up
        is the JAX time over its own.
    """
    model = build_classifier(config).encoder
    inputs = random_inputs(config)
    run = jit_module(model, _forward)
    setup = BackboneSetup(
        model=model,
        forward=lambda: run(inputs),
        inputs=inputs,
        checkpoint=pretrained_dir(config),
    )
    candidates = {BASELINE: setup.forward}
    for name, factory in (extra or {}).items():
        candidates[name] = factory(setup)
    timings = time_interleaved(candidates, config.rounds)

    b, t = config.batch_size, config.seq_len
    flops = b * encoder_flops(model.config, t)
    rate = matmul_gflops(config.matmul_size, config.rounds) if config.matmul_size else None
    info = {}
    for name, timing in timings.items():
        gflops = flops / (timing.median_ms * 1e-3) / 1e9
        info[name] = dict(
            examples_per_s=b / (timing.median_ms * 1e-3),
            gflop_per_s=gflops,
        )
        if rate is not None:
            info[name]["of_matmul_rate"] = gflops / rate
    args = dict(
        batch_size=b,
        seq_len=t,
        num_layers=model.config.num_layers,
        hidden_size=model.config.hidden_size,
        weights="pretrained" if setup.checkpoint is not None else "random",
        rounds=config.rounds,
        gflop_per_forward=flops / 1e9,
        matmul_size=config.matmul_size,
        matmul_gflop_per_s=rate,
    )
    return make_result("backbone", timings, BASELINE, args, info=info)


def _forward(model: BertModel, inputs: Inputs):
    out = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    # The pooled vector too: left out, XLA would drop the pooler the FLOP count includes.
    return out.last_hidden_state, out.pooled
