"""CALM-style decoder exits on tiny random GPT-2 and T5 models: mean layers per generated
token and the share of tokens identical to full-model decoding, over thresholds.

    python eval/bench_calm.py [--json OUT.json]

Random weights make the softmax nearly flat, so the thresholds of the softmax measures are
small numbers here; the "state" measure (cosine similarity of consecutive hidden states) is
scale-free. Every run decodes the same prompts with the same model; only the threshold
changes, and +inf reproduces `generate` exactly.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from flax import nnx

from elang_jax import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration
from elang_jax.exits import CalmConfig, calm_generate_gpt2, calm_generate_t5, mean_layers_per_token

THRESHOLDS = {
    "softmax_max": (math.inf, 0.02, 0.01, 0.005, -math.inf),
    "softmax_diff": (math.inf, 0.01, 0.003, 0.001, -math.inf),
    "state": (math.inf, 0.999, 0.99, 0.95, -math.inf),
}


def _agreement(tokens: np.ndarray, full: np.ndarray) -> float:
    """Share of positions (up to the full model's first EOS or the end) that agree."""
    return float((tokens == full).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rng = np.random.RandomState(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config.tiny(n_layer=args.layers, eos_token_id=None), rngs=nnx.Rngs(0)
    )
    t5 = T5ForConditionalGeneration(
        T5Config.tiny(num_layers=2, num_decoder_layers=args.layers), rngs=nnx.Rngs(0)
    )
    prompts = rng.randint(1, 90, (args.batch, 8)).astype(np.int32)
    mask = np.ones_like(prompts)
    runs = {
        "gpt2": lambda cfg: calm_generate_gpt2(gpt2, prompts, mask, args.new_tokens, cfg),
        "t5": lambda cfg: calm_generate_t5(t5, prompts, mask, args.new_tokens, cfg),
    }
    rows = []
    for name, run in runs.items():
        full = np.asarray(run(CalmConfig()).tokens)
        for measure, thresholds in THRESHOLDS.items():
            for thr in thresholds:
                out = run(CalmConfig(confidence=measure, threshold=thr))
                rows.append(
                    dict(
                        model=name,
                        measure=measure,
                        threshold=thr,
                        mean_layers=mean_layers_per_token(out),
                        identical=_agreement(np.asarray(out.tokens), full),
                    )
                )
    print(
        f"tiny models, {args.layers} decoder layers, batch {args.batch}, {args.new_tokens} tokens"
    )
    print(f"{'model':<5} {'measure':<13} {'threshold':>9} {'layers/token':>12} {'identical':>9}")
    for r in rows:
        print(
            f"{r['model']:<5} {r['measure']:<13} {r['threshold']:>9.4g} "
            f"{r['mean_layers']:>12.2f} {100 * r['identical']:>8.1f}%"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(args=vars(args), rows=rows), indent=2))


if __name__ == "__main__":
    main()
