"""The device checks of eval/gpu_check.sh that are not the bench suite (`gpu_check`): the
Pallas kernels compiled and compared with their references, and the sharded serving steps
over every local device, each against the one-device step example by example.

`kernels`: the MoE dispatch/combine kernels (`elang_jax.kernels.moe_dispatch`) compiled
(interpret=False) on the accelerator, forward and gradient, against their jnp references,
at MoE-layer sizes, with their times next to the references' (median of 10 calls).
`sharded`: the cascade, exit, composed and seq2seq steps on a mesh of every local device
("data" over all of them; with 2+ devices also data x model), and the cascade's step time
with and without the mesh. A dry run (or a CPU-only machine): tiny sizes, kernels in
interpret mode, the sharded steps on forced CPU devices.
"""

from __future__ import annotations

import math
from typing import Any

from elang_jax import jsonio
from elang_jax.timing import time_interleaved


def gpu_check(what: str, dry_run: bool) -> dict[str, Any]:
    """Runs check `what` ("kernels" or "sharded"); the result holds "ok" and every number."""
    if what not in ("kernels", "sharded"):
        raise ValueError(f"what must be 'kernels' or 'sharded', got {what!r}")
    return (check_kernels if what == "kernels" else check_sharded)(dry_run)


def _median_ms(fn, repeats: int = 10) -> float:
    # The one timing routine (warm-up call, then `repeats` timed calls).
    return time_interleaved({"fn": fn}, repeats)["fn"].median_ms


def check_kernels(dry_run: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from elang_jax.kernels import (  # pyright: ignore[reportMissingImports]  # kernels/ via package-dir
        moe_dispatch as md,
    )
    from elang_jax.testing import is_close

    interpret = dry_run or jax.default_backend() == "cpu"
    sizes = [(64, 2, 4, 32, 16)] if dry_run else [(4096, 2, 8, 384, 128), (16384, 2, 64, 768, 128)]
    rows = []
    for n, k, e, d, block in sizes:
        rng = np.random.RandomState(0)
        x = jnp.asarray(rng.randn(n, d), jnp.float32)
        experts = np.concatenate([rng.permutation(e)[:k] for _ in range(n)]).reshape(n, k).T
        order = jnp.argsort(jnp.asarray(experts.ravel()), stable=True).astype(jnp.int32)
        gates = jnp.asarray(rng.rand(n, k), jnp.float32)
        scale = jnp.asarray(rng.randn(n * k, d), jnp.float32)

        def kernel_path(x, scale, gates, order=order, k=k, block=block):
            ys = md.dispatch(x, order, k, block_rows=block, interpret=interpret) * scale
            return md.combine(ys, order, gates, block_rows=block, interpret=interpret)

        def reference_path(x, scale, gates, order=order, k=k):
            return md.combine_reference(md.dispatch_reference(x, order, k) * scale, order, gates)

        def grads(path):
            return jax.jit(jax.grad(lambda *xs: path(*xs).sum(), argnums=(0, 1, 2)))

        fwd_k, fwd_r = jax.jit(kernel_path), jax.jit(reference_path)
        grad_k, grad_r = grads(kernel_path), grads(reference_path)
        args = (x, scale, gates)
        out_k, out_r = fwd_k(*args), fwd_r(*args)
        gk, gr = grad_k(*args), grad_r(*args)
        diff = float(jnp.abs(out_k - out_r).max())
        grad_diff = max(float(jnp.abs(g - h).max()) for g, h in zip(gk, gr, strict=True))
        rows.append(
            dict(
                n=n,
                k=k,
                experts=e,
                d=d,
                block_rows=block,
                interpret=interpret,
                max_abs_diff=diff,
                grad_max_abs_diff=grad_diff,
                ok=is_close(out_k, out_r) and all(map(is_close, gk, gr)),
                kernel_ms=_median_ms(lambda f=fwd_k, a=args: f(*a)),
                reference_ms=_median_ms(lambda f=fwd_r, a=args: f(*a)),
                kernel_grad_ms=_median_ms(lambda f=grad_k, a=args: f(*a)),
                reference_grad_ms=_median_ms(lambda f=grad_r, a=args: f(*a)),
            )
        )
        print(jsonio.dumps(rows[-1], indent=None), flush=True)
    return dict(backend=jax.default_backend(), cases=rows, ok=all(r["ok"] for r in rows))


def _meshes():
    import jax

    n = jax.device_count()
    shapes = [(n, 1, 1)]
    if n >= 4 and n % 2 == 0:
        shapes.append((n // 2, 1, 2))
    return [jax.make_mesh(s, ("data", "expert", "model")) for s in shapes]


def check_sharded(dry_run: bool) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from elang_jax.cascade import Cascade, ElangSeq2Seq, Seq2SeqCascadeConfig, Tier, TierConfig
    from elang_jax.cascade._seq2seq import EnergyHead
    from elang_jax.compose import ComposedClassifier, ComposedConfig
    from elang_jax.exits import MultiExit, MultiExitConfig
    from elang_jax.models import BertConfig, BertForSequenceClassification
    from elang_jax.models._t5 import T5Config, T5ForConditionalGeneration
    from elang_jax.testing import is_close

    n_dev = jax.device_count()
    b = 8 * n_dev if dry_run else 64 * n_dev
    t = 16 if dry_run else 128

    def bert(layers: int, seed: int) -> BertForSequenceClassification:
        if dry_run:
            cfg = BertConfig.tiny(num_layers=layers, num_labels=2, hidden_dropout=0.0)
        else:
            cfg = BertConfig.minilm_l6(num_layers=layers, num_labels=2, hidden_dropout=0.0)
        return BertForSequenceClassification(cfg, rngs=nnx.Rngs(seed))

    rng = np.random.RandomState(0)
    vocab = 99
    ids = rng.randint(1, vocab, size=(b, t)).astype(np.int32)
    batch = dict(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=0 * ids)
    cascade = Cascade(
        [Tier(bert(1, 1), TierConfig(name="a")), Tier(bert(2, 2), TierConfig(name="b"))]
    )
    me = MultiExit(bert(2, 3), MultiExitConfig.tiny(), rngs=nnx.Rngs(4))
    composed = ComposedClassifier(
        [bert(1, 5), MultiExit(bert(2, 6), MultiExitConfig.tiny(), rngs=nnx.Rngs(7))],
        ComposedConfig.tiny(),
    )
    t5 = dict(num_layers=1, num_decoder_layers=1)
    seq2seq = ElangSeq2Seq(
        T5ForConditionalGeneration(T5Config.tiny_v1_1(**t5), rngs=nnx.Rngs(1)),
        T5ForConditionalGeneration(
            T5Config.tiny_v1_1(num_layers=1, num_decoder_layers=2), rngs=nnx.Rngs(2)
        ),
        EnergyHead(T5Config.tiny_v1_1(**t5).d_model, hidden=8, rngs=nnx.Rngs(3)),
        Seq2SeqCascadeConfig(max_new_tokens=3),
    )
    swift_scores = np.asarray(cascade.serving_step(b)(batch, thresholds=[math.inf]).scores[:, 0])
    th = float(np.median(swift_scores))
    s2s_inputs = dict(input_ids=ids[:, :8], attention_mask=np.ones_like(ids[:, :8]))
    composed_scores = composed.serving_step(b)(batch, thresholds=[math.inf]).scores[:, 0]
    composed_th = [float(np.median(np.asarray(composed_scores)))]
    s2s_th = float(np.median(np.asarray(seq2seq.head_scores(ids[:, :8]))))
    cases = {
        "cascade": (cascade.serving_step, batch, dict(thresholds=[th]), ("predictions", "tier")),
        "exits": (
            lambda b, mesh=None, rebalance=False: me.exit_step(b, mesh=mesh),
            batch,
            dict(threshold=-0.5),
            ("predictions", "exit_index"),
        ),
        "composed": (
            composed.serving_step,
            batch,
            dict(thresholds=composed_th),
            ("predictions", "tier", "exit_index"),
        ),
        "seq2seq": (seq2seq.serving_step, s2s_inputs, dict(threshold=s2s_th), ("tokens", "tier")),
    }
    rows = []
    for name, (make, inputs, kw, exact) in cases.items():
        ref = make(b)(inputs, **kw)
        # A dry run compiles on 2 CPU cores: the other steps on the data mesh only.
        meshes = _meshes() if name == "cascade" or not dry_run else _meshes()[:1]
        for mesh in meshes:
            for rebalance in (False, True) if name != "exits" else (False,):
                out = make(b, mesh=mesh, rebalance=rebalance)(inputs, **kw)
                same = all(np.array_equal(getattr(out, f), getattr(ref, f)) for f in exact)
                close = all(
                    is_close(getattr(out, f), getattr(ref, f))
                    for f in ("logits", "scores")
                    if hasattr(ref, f)
                )
                rows.append(
                    dict(
                        step=name,
                        mesh=dict(mesh.shape),
                        rebalance=rebalance,
                        exact_equal=bool(same),
                        close=close,
                        buckets_used=np.asarray(out.buckets_used).tolist(),
                    )
                )
                print(jsonio.dumps(rows[-1], indent=None), flush=True)
    timing = {}
    plain = cascade.serving_step(b)
    timing["cascade_one_device_ms"] = _median_ms(lambda: plain(batch, thresholds=[th]))
    for rebalance in (False, True):
        step = cascade.serving_step(b, mesh=_meshes()[0], rebalance=rebalance)
        key = f"cascade_data_parallel{'_rebalanced' if rebalance else ''}_ms"
        timing[key] = _median_ms(lambda s=step: s(batch, thresholds=[th]))
    print(jsonio.dumps(timing, indent=None), flush=True)
    ok = all(r["exact_equal"] and r["close"] for r in rows)
    return dict(
        backend=jax.default_backend(),
        devices=n_dev,
        batch=b,
        length=t,
        steps=rows,
        timing=timing,
        ok=ok,
    )
