"""Training on a mesh: data + tensor parallel steps, orbax checkpoints across meshes, resume."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from elang_jax import training
from elang_jax.models import BertConfig, BertForSequenceClassification
from elang_jax.sharding import (
    make_mesh,
    make_sharded_train_step,
    restore_train_state,
    save_train_state,
    shard_batch,
    shard_train_state,
    train_shardings,
)
from elang_jax.testing import assert_close

STEPS = 4


def _setup():
    config = training.tiny(
        "unused", model_config=BertConfig.tiny(vocab_size=128, num_layers=1, intermediate_size=64)
    )
    model = BertForSequenceClassification(config.model_config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = training.make_optimizer(config, STEPS)
    return graphdef, params, rest, optimizer, jax.random.key(0)


def _batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.RandomState(0)
    out = []
    for _ in range(STEPS):
        mask = np.ones((8, 12), np.int32)
        mask[::3, 8:] = 0
        out.append(
            dict(
                input_ids=rng.randint(1, 128, (8, 12)).astype(np.int32) * mask,
                attention_mask=mask,
                token_type_ids=np.zeros((8, 12), np.int32),
                labels=rng.randint(0, 2, (8,)).astype(np.int32),
                valid=np.ones((8,), bool),
            )
        )
    return out


def _run(step_fn, params, rest, opt_state, mesh, start, stop):
    losses = []
    for s, batch in list(enumerate(_batches()))[start:stop]:
        params, opt_state, metrics = step_fn(
            params, rest, opt_state, shard_batch(batch, mesh), np.int32(s)
        )
        losses.append(float(metrics["loss"]))
    return params, opt_state, losses


def _flat(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_checkpoint_across_meshes_and_exact_resume(tmp_path):
    graphdef, params, rest, optimizer, key = _setup()
    mesh = make_mesh(data=4, model=2)
    sh = train_shardings(params, rest, optimizer.init(params), mesh)
    step_fn = make_sharded_train_step(graphdef, optimizer, key, sh)
    start = shard_train_state(params, rest, optimizer.init(params), sh)
    kernel = start[0]["encoder"]["layers"][0]["ffn"]["w_in"]["kernel"][...]
    assert kernel.addressable_shards[0].data.shape == (32, 32)  # split over "model"

    # uninterrupted
    *_, losses = _run(step_fn, *start, mesh, 0, STEPS)

    # interrupted after 2 steps, checkpointed, restored on the same mesh, resumed
    p, o, first = _run(step_fn, *start, mesh, 0, 2)
    mu = jax.tree.leaves(o)[1]
    assert mu.sharding.spec in (
        p["encoder"]["layers"][0]["attention"]["query"]["bias"][...].sharding.spec,
        mu.sharding.spec,
    )
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    save_train_state(manager, 2, p, o, {"note": "mid-run"})
    manager.wait_until_finished()
    restored = restore_train_state(manager, 2, params, o, sh)
    assert restored.meta == {"step": 2, "note": "mid-run"}
    *_, rest_losses = _run(step_fn, restored.params, start[1], restored.opt_state, mesh, 2, STEPS)
    assert first + rest_losses == losses  # exactly the same sequence

    # restored onto 2 devices and onto 8 data shards: the same parameters, to the bit
    saved = _flat(p) + _flat(o)
    for target in (make_mesh(data=2, devices=jax.devices()[:2]), make_mesh(data=8)):
        target_sh = train_shardings(params, rest, o, target)
        again = restore_train_state(manager, 2, params, o, target_sh)
        leaf = again.params["encoder"]["layers"][0]["ffn"]["w_in"]["kernel"][...]
        assert leaf.sharding.mesh.devices.size == target.devices.size
        for a, b in zip(saved, _flat(again.params) + _flat(again.opt_state), strict=True):
            np.testing.assert_array_equal(a, b)
    manager.close()


@pytest.mark.slow
def test_sharded_training_matches_one_device():
    # Losses and gradient norms agree to float32 tolerance. The parameters are not compared:
    # Adam divides by the root of the second moment, so a parameter whose gradient is near 0
    # moves by about the learning rate in the direction of rounding noise.
    graphdef, params, rest, optimizer, key = _setup()
    single = training.make_train_step(graphdef, optimizer, key)
    opt_state = optimizer.init(params)
    expected = []
    p, o = params, opt_state
    for s, batch in enumerate(_batches()):
        arrays = {k: jax.numpy.asarray(v) for k, v in batch.items()}
        p, o, m = single(p, rest, o, arrays, np.int32(s))
        expected.append((float(m["loss"]), float(m["grad_norm"])))
    mesh = make_mesh(data=4, model=2)
    sh = train_shardings(params, rest, opt_state, mesh)
    step_fn = make_sharded_train_step(graphdef, optimizer, key, sh)
    p, r, o = shard_train_state(params, rest, opt_state, sh)
    got = []
    for s, batch in enumerate(_batches()):
        p, o, m = step_fn(p, r, o, shard_batch(batch, mesh), np.int32(s))
        got.append((float(m["loss"]), float(m["grad_norm"])))
    assert_close(np.asarray(got), np.asarray(expected))


def test_shard_batch_rejects_uneven_rows():
    mesh = make_mesh(data=8)
    with pytest.raises(ValueError, match="must divide evenly over the 8 batch shards"):
        shard_batch({"input_ids": np.zeros((6, 4), np.int32)}, mesh)


@pytest.mark.slow
def test_train_and_evaluate_on_a_mesh_resumes_exactly_and_on_another_mesh(minilm_dir, tmp_path):
    import json

    from safetensors.numpy import load_file

    config = training.tiny(
        minilm_dir, max_length=32, buckets=(32,), train_limit=48, eval_limit=24, log_every=1
    )

    def run(workdir, mesh, **kw):
        return training.train_and_evaluate(config.replace(**kw), tmp_path / workdir, mesh=mesh)

    def losses(workdir):
        lines = (tmp_path / workdir / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if "lr" in r}

    def final(workdir):
        return load_file(str(tmp_path / workdir / "final" / "model.safetensors"))

    full = run("full", make_mesh(data=4, model=2))
    assert full["step"] == 6
    run("resumed", make_mesh(data=4, model=2), max_steps=3)
    run("resumed", make_mesh(data=4, model=2))
    assert {s: v for s, v in losses("resumed").items() if s > 3} == {
        s: v for s, v in losses("full").items() if s > 3
    }
    want, got = final("full"), final("resumed")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # the step-3 checkpoint of a (4, 2) mesh resumes on 8 data shards
    run("moved", make_mesh(data=4, model=2), max_steps=3)
    moved = run("moved", make_mesh(data=8))
    assert moved["step"] == 6 and all(np.isfinite(v) for v in losses("moved").values())
