"""Backbone forward: JAX (jit) against transformers' PyTorch, same inputs, one run.

    python eval/bench_backbone.py [--json OUT.json]

Times all-MiniLM-L6-v2 at batch 32 x 64 tokens and batch 1 x 64 tokens, prints the
PyTorch/JAX time ratio, the achieved GFLOP/s (analytic FLOP model) and the machine's
measured f32 matmul rate through XLA. Runs unchanged on a GPU (the PyTorch side then uses
CUDA if torch sees it).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elang_jax import from_pretrained
from elang_jax.checkpoints import minilm_l6_dir
from elang_jax.flops import encoder_flops


def _time(fn, repeats: int) -> float:
    """Median seconds of `fn()` after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def matmul_rate(n: int = 2048, repeats: int = 10) -> float:
    """Measured float32 matmul GFLOP/s through XLA on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    sec = _time(lambda: f(a).block_until_ready(), repeats)
    return 2 * n**3 / sec / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    path = minilm_l6_dir()
    model = from_pretrained(path)
    config = model.config
    graphdef, state = nnx.split(model)

    @jax.jit
    def jax_forward(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask).last_hidden_state

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_model = transformers.BertModel.from_pretrained(str(path)).eval().to(device)

    rate = matmul_rate()
    rows = []
    for batch, length in ((32, 64), (1, 64)):
        rng = np.random.RandomState(0)
        ids = rng.randint(1000, config.vocab_size, size=(batch, length)).astype(np.int32)
        mask = np.ones_like(ids)
        j_ids, j_mask = jnp.asarray(ids), jnp.asarray(mask)
        t_ids = torch.tensor(ids, dtype=torch.long, device=device)
        t_mask = torch.tensor(mask, device=device)

        def run_jax(j_ids=j_ids, j_mask=j_mask):
            jax_forward(state, j_ids, j_mask).block_until_ready()

        def run_torch(t_ids=t_ids, t_mask=t_mask):
            with torch.inference_mode():
                torch_model(input_ids=t_ids, attention_mask=t_mask)
            if device == "cuda":
                torch.cuda.synchronize()

        # Same outputs first: a speed comparison of different computations means nothing.
        with torch.inference_mode():
            ref = torch_model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
        diff = float(
            np.abs(np.asarray(jax_forward(state, j_ids, j_mask)) - ref.cpu().numpy()).max()
        )
        # Interleave the two sides so that load from other processes hits both alike.
        jt, tt = [], []
        for _ in range(3):
            jt.append(_time(run_jax, args.repeats // 3 + 1))
            tt.append(_time(run_torch, args.repeats // 3 + 1))
        j_sec, t_sec = min(jt), min(tt)
        flops = batch * encoder_flops(config, length)
        rows.append(
            dict(
                batch=batch,
                length=length,
                jax_ms=j_sec * 1e3,
                torch_ms=t_sec * 1e3,
                speedup_jax_over_torch=t_sec / j_sec,
                jax_gflops=flops / j_sec / 1e9,
                torch_gflops=flops / t_sec / 1e9,
                max_abs_diff=diff,
            )
        )
    result = dict(
        device=str(jax.devices()[0]),
        cpu_count=os.cpu_count(),
        jax=jax.__version__,
        torch=torch.__version__,
        matmul_gflops=rate,
        rows=rows,
    )
    print(f"device {result['device']}  f32 matmul rate {rate:.1f} GFLOP/s")
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
