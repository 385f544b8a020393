"""One process of the two-process test (tests/test_multiprocess.py); not a test itself.

    python tests/_multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_JSON

Each process has one CPU device (the parent sets XLA_FLAGS). It builds the same tiny models
from seeds, computes the single-device answers on its own device (what a one-process run
gives), then runs the same work over the global mesh of every process's device: a
data-parallel cascade step fed with this process's rows only, and a few data-parallel train
steps (parameters replicated, the batch split over "data"). It writes what it found to
OUT_JSON for the parent to check.
"""

from __future__ import annotations

import json
import sys


def main(process_id: int, num_processes: int, port: int, out_path: str) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    import numpy as np
    import optax
    from flax import nnx
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    from elang_jax.cascade import Cascade, Tier, TierConfig
    from elang_jax.models import BertConfig, BertForSequenceClassification
    from elang_jax.training import make_train_step

    assert jax.process_count() == num_processes and jax.local_device_count() == 1
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    b, t = 8, 6

    def classifier(layers: int, seed: int) -> BertForSequenceClassification:
        cfg = BertConfig.tiny(num_layers=layers, num_labels=2, hidden_dropout=0.0)
        return BertForSequenceClassification(cfg, rngs=nnx.Rngs(seed))

    rng = np.random.RandomState(0)
    ids = rng.randint(1, 99, size=(b, t)).astype(np.int32)
    batch = dict(input_ids=ids, attention_mask=np.ones_like(ids), token_type_ids=0 * ids)
    rows = b // num_processes
    mine = slice(process_id * rows, (process_id + 1) * rows)
    report: dict = dict(process_id=process_id, devices=jax.device_count())

    # 1. The cascade step: one device, then data-parallel with this process's rows.
    cascade = Cascade(
        [Tier(classifier(1, 1), TierConfig(name="a")), Tier(classifier(1, 2), TierConfig(name="b"))]
    )
    plain = cascade.serving_step(b)
    scores = np.asarray(plain(batch, thresholds=[np.inf]).scores[:, 0])
    th = [float(np.median(scores))]
    ref = plain(batch, thresholds=th)
    step = cascade.serving_step(b, mesh=mesh)
    out = step({k: v[mine] for k, v in batch.items()}, thresholds=th)
    got = multihost_utils.process_allgather(out, tiled=True)
    report["cascade"] = dict(
        predictions_equal=bool(np.array_equal(got.predictions, ref.predictions)),
        tier_equal=bool(np.array_equal(got.tier, ref.tier)),
        logits_max_diff=float(np.abs(np.asarray(got.logits) - np.asarray(ref.logits)).max()),
        escalated=int(np.asarray(ref.tier).sum()),
        buckets_used=np.asarray(got.buckets_used).tolist(),
    )

    # 2. Train steps: one device, then data parallel (batch rows split over "data").
    labels = (ids[:, 0] % 2).astype(np.int32)
    train = dict(batch, labels=labels, valid=np.ones(b, bool))
    model = classifier(1, 3)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    # SGD: Adam divides by the gradients' own size, so a gradient that is ~0 up to rounding
    # (summed in another order across devices) would take a full step either way.
    optimizer = optax.sgd(0.5)
    train_step = make_train_step(graphdef, optimizer, jax.random.key(0))

    def host(x) -> np.ndarray:
        # A global array is gathered from every process; a local one is read as it is.
        return np.asarray(
            x if x.is_fully_addressable else multihost_utils.process_allgather(x, tiled=True)
        )

    def run(params, rest, batch_of):
        opt_state = optimizer.init(params)
        losses = []
        for s in range(3):
            params, opt_state, metrics = train_step(params, rest, opt_state, batch_of(s), s)
            losses.append(float(host(metrics["loss"])))
        return params, losses

    ref_params, ref_losses = run(params, rest, lambda s: train)
    replicated = NamedSharding(mesh, P())
    rows_sharding = NamedSharding(mesh, P("data"))

    def global_replicated(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, replicated, lambda i: host[i])

    sharded_batch = {
        k: jax.make_array_from_process_local_data(rows_sharding, v[mine], v.shape)
        for k, v in train.items()
    }
    dp_params, dp_losses = run(
        jax.tree.map(global_replicated, params),
        jax.tree.map(global_replicated, rest),
        lambda s: sharded_batch,
    )
    diffs = jax.tree.map(lambda a, r: float(np.abs(host(a) - host(r)).max()), dp_params, ref_params)
    report["train"] = dict(
        losses=dp_losses,
        ref_losses=ref_losses,
        params_max_diff=max(jax.tree.leaves(diffs)),
    )
    with open(out_path, "w") as f:
        json.dump(report, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
