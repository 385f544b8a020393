"""Data-parallel routing on the 8 forced CPU devices: every compiled step (cascade, exits,
composed, seq2seq E-LANG) on a mesh equals the single-device step example by example, each
data shard picks its own bucket (`buckets_used`), no device gathers the batch (the HLO),
and rebalancing escalated rows over the shards changes no output."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from elang_jax.cascade import Cascade, Tier, TierConfig
from elang_jax.cascade._seq2seq import ElangSeq2Seq, EnergyHead, Seq2SeqCascadeConfig
from elang_jax.compose import ComposedClassifier, ComposedConfig
from elang_jax.engine import balanced_apply
from elang_jax.exits import MultiExit, MultiExitConfig
from elang_jax.models import BertConfig, BertForSequenceClassification
from elang_jax.models._t5 import T5Config, T5ForConditionalGeneration
from elang_jax.testing import assert_close

B, T, C = 16, 8, 3
MESHES = {"data8": (8, 1, 1), "data4_model2": (4, 1, 2), "data2_expert2_model2": (2, 2, 2)}


def _mesh(name: str):
    return jax.make_mesh(MESHES[name], ("data", "expert", "model"))


def _classifier(layers: int, seed: int) -> BertForSequenceClassification:
    cfg = BertConfig.tiny(num_layers=layers, num_labels=C, hidden_dropout=0.0, intermediate_size=32)
    return BertForSequenceClassification(cfg, rngs=nnx.Rngs(seed))


def _tensor_parallel(model: nnx.Module, mesh) -> None:
    """Megatron-like placement for the test: 2-D kernels split by columns over "model"
    (GSPMD inserts the collectives), the rest replicated."""
    m = mesh.shape["model"]

    def place(x):
        spec = P(None, "model") if x.ndim == 2 and x.shape[1] % m == 0 else P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    nnx.update(model, jax.tree.map(place, nnx.state(model, nnx.Param)))


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, 99, size=(B, T)).astype(np.int32)
    mask = np.ones_like(ids)
    for i, n in enumerate(rng.randint(3, T + 1, size=B)):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))


def _skewed(batch, score: np.ndarray) -> dict[str, np.ndarray]:
    """The batch reordered so the least confident rows come first: the first data shards
    hold all the hard inputs."""
    order = np.argsort(score, kind="stable")
    return {k: v[order] for k, v in batch.items()}


def _assert_same(sharded, plain, exact: tuple[str, ...], close: tuple[str, ...]) -> None:
    for name in exact:
        np.testing.assert_array_equal(getattr(sharded, name), getattr(plain, name), err_msg=name)
    for name in close:
        assert_close(getattr(sharded, name), getattr(plain, name), err_msg=name)


def _gathers(step, *args, **kwargs) -> list[tuple[int, str]]:
    """(devices per group, instruction) of each all-gather of the compiled, partitioned
    program (the call before compiled it: this reads the cached executable)."""
    text = step.lower(*args, **kwargs).compile().as_text()
    found = []
    for line in text.splitlines():
        if not re.search(r"\ball-gather(-start)?\(", line):
            continue
        iota = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line)
        listed = re.search(r"replica_groups=\{\{([\d,]+)\}", line)
        assert iota or listed, line
        size = int(iota.group(2)) if iota else len(listed.group(1).split(","))  # type: ignore[union-attr]
        found.append((size, line))
    return found


# ---------------------------------------------------------------------------------- cascade


def _cascade_case(mesh_name: str):
    mesh = _mesh(mesh_name)
    swift, sup = _classifier(1, 1), _classifier(1, 2)
    cascade = Cascade([Tier(swift, TierConfig(name="a")), Tier(sup, TierConfig(name="b"))])
    plain = cascade.serving_step(B)
    batch = _batch()
    first = plain(batch, thresholds=[math.inf])
    batch = _skewed(batch, np.asarray(first.scores[:, 0]))
    # 5 of 16 rows escalate, all on the first shards. The threshold lies midway between two
    # scores: sharded scores equal the one-device ones to float tolerance, not bitwise.
    ranked = np.sort(np.asarray(first.scores[:, 0]))
    th = float((ranked[4] + ranked[5]) / 2)
    valid = np.ones(B, bool)
    valid[-1] = False
    if mesh.shape["model"] > 1:
        _tensor_parallel(sup, mesh)
    return cascade, plain, batch, dict(thresholds=[th], valid=valid), mesh


@pytest.mark.parametrize("mesh_name", ["data2_expert2_model2"])
def test_cascade_data_parallel_equals_one_device(mesh_name):
    cascade, plain, batch, kw, mesh = _cascade_case(mesh_name)
    ref = plain(batch, **kw)
    # Rows split over "data" and "expert" (`elang_jax.sharding`'s batch axes).
    shards = mesh.shape["data"] * mesh.shape["expert"]
    rows = B // shards
    local = cascade.serving_step(B, mesh=mesh)
    assert local.shards == shards and local.buckets[-1] == rows
    out = local(batch, **kw)
    _assert_same(out, ref, ("predictions", "tier"), ("logits", "scores"))
    used = np.asarray(out.buckets_used)
    # Each shard ran tier 0 on its rows and tier 1 on its own bucket: the hard rows sit on
    # the first shards, so the buckets differ.
    assert used.shape == (shards, 2) and (used[:, 0] == rows).all()
    escalated = (np.asarray(ref.tier) == 1).reshape(shards, rows).sum(1)
    assert (used[:, 1] >= escalated).all() and used[0, 1] > used[-1, 1] == 0
    # No all-gather over the data axis: each shard packs its own rows. (Tensor-parallel
    # kernels gather activations within a model group, of the shard's own rows.)
    model = mesh.shape["model"]
    assert model != shards
    assert all(size == model for size, _ in _gathers(local, batch, **kw))
    # Rebalanced: the same answers, the escalated rows spread over every shard.
    balanced = cascade.serving_step(B, mesh=mesh, rebalance=True)
    out = balanced(batch, **kw)
    _assert_same(out, ref, ("predictions", "tier"), ("logits", "scores"))
    spread = np.asarray(out.buckets_used)[:, 1]
    assert spread.max() < used[:, 1].max()
    assert (spread > 0).sum() == min(shards, escalated.sum())
    # Its only all-gather over the data axis is of the shards' escalated counts ([shards]
    # int32), never of rows; the rows move by all-to-all.
    over_data = [g for size, g in _gathers(balanced, batch, **kw) if size == shards]
    assert len(over_data) == 1 and f"s32[{shards}]" in over_data[0], over_data
    assert "all-to-all" in str(balanced.lower(batch, **kw).compile().as_text())


def test_mesh_arguments_are_checked():
    cascade = Cascade(
        [
            Tier(_classifier(1, 1), TierConfig(name="a")),
            Tier(_classifier(1, 2), TierConfig(name="b")),
        ]
    )
    with pytest.raises(ValueError, match=r"batch_size 12 is not divisible .* \(8 shards\)"):
        cascade.serving_step(12, mesh=_mesh("data8"))
    with pytest.raises(ValueError, match="needs a 'data' axis"):
        cascade.serving_step(B, mesh=jax.make_mesh((8,), ("model",)))
    with pytest.raises(ValueError, match="rebalance=True needs a mesh"):
        cascade.serving_step(B, rebalance=True)
    # Steps are cached per batch size and layout; an Explicit mesh is made Auto.
    mesh = _mesh("data8")
    step = cascade.serving_step(B, mesh=mesh)
    assert cascade.serving_step(B, mesh=mesh) is step
    assert cascade.serving_step(B, mesh=mesh, rebalance=True) is not step
    assert step.layout is not None
    assert all(str(t) == "AxisType.Auto" for t in step.layout.mesh.axis_types)


def test_balanced_apply_matches_local_packing():
    """The exchange alone, on uneven counts (6, 0, 1, 0) and a ragged capacity (6 rows over
    4 shards: capacity 2, receive buffer 8 > 6)."""
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
    rows = 6
    x = jnp.arange(4 * rows * 3, dtype=jnp.float32).reshape(4 * rows, 3)
    route = np.zeros(4 * rows, bool)
    route[:6] = True
    route[2 * rows + 4] = True

    def fn(r, v):
        return dict(y=jnp.tanh(r["x"]).sum(-1), n=v.astype(jnp.int32))

    def body(x, route):
        default = dict(y=jnp.full((rows,), -1.0), n=jnp.zeros((rows,), jnp.int32))
        out, packing = balanced_apply(fn, route, dict(x=x), default, (0, 3, rows), 4)
        return out["y"], packing.count[None]

    y, counts = jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=P("data"), out_specs=P("data"), check_vma=False)
    )(x, route)
    expect = np.where(route, np.tanh(np.asarray(x)).sum(-1), -1.0)
    assert_close(y, expect)
    np.testing.assert_array_equal(counts, [2, 2, 2, 1])


# ---------------------------------------------------------------------------------- others


def _exits_case():
    me = MultiExit(_classifier(3, 3), MultiExitConfig.tiny(), rngs=nnx.Rngs(4))
    kw = dict(threshold=-0.9)
    return (
        (lambda mesh, rebalance: me.exit_step(B, mesh=mesh)),
        kw,
        _batch(1),
        (
            ("predictions", "exit_index", "layers"),
            ("logits", "scores"),
        ),
    )


def _composed_case():
    system = ComposedClassifier(
        [_classifier(1, 5), MultiExit(_classifier(2, 6), MultiExitConfig.tiny(), rngs=nnx.Rngs(7))],
        ComposedConfig.tiny(),
    )
    kw = dict(thresholds=[-0.8], exit_thresholds=[0.0, -0.6])
    return (
        lambda mesh, rebalance: system.serving_step(B, mesh=mesh, rebalance=rebalance),
        kw,
        _batch(2),
        (("predictions", "tier", "exit_index", "layers"), ("logits", "scores")),
    )


def _seq2seq_case():
    swift = T5ForConditionalGeneration(
        T5Config.tiny_v1_1(num_layers=1, num_decoder_layers=1), rngs=nnx.Rngs(1)
    )
    sup = T5ForConditionalGeneration(
        T5Config.tiny_v1_1(num_layers=1, num_decoder_layers=2), rngs=nnx.Rngs(2)
    )
    head = EnergyHead(swift.config.d_model, hidden=8, rngs=nnx.Rngs(3))
    cascade = ElangSeq2Seq(
        swift, sup, head, Seq2SeqCascadeConfig(max_new_tokens=3, bucket_fractions=(0.0, 0.5, 1.0))
    )
    ids = np.random.RandomState(3).randint(2, 99, size=(B, 6)).astype(np.int32)
    inputs = dict(input_ids=ids, attention_mask=np.ones_like(ids))
    th = float(np.median(np.asarray(cascade.head_scores(ids))))
    return (
        lambda mesh, rebalance: cascade.serving_step(B, mesh=mesh, rebalance=rebalance),
        dict(threshold=th),
        inputs,
        (("tokens", "tier"), ("score", "head_logits")),
    )


CASES = {"exits": _exits_case, "composed": _composed_case, "seq2seq": _seq2seq_case}


def _check_front_end(case: str, mesh_name: str, rebalance: bool) -> None:
    make, kw, batch, (exact, close) = CASES[case]()
    ref = make(None, False)(batch, **kw)
    step = make(_mesh(mesh_name), rebalance)
    out = step(batch, **kw)
    _assert_same(out, ref, exact, close)
    used = np.asarray(out.buckets_used)
    assert used.shape == (step.shards, np.asarray(ref.buckets_used).shape[1])
    assert (used <= B // step.shards).all()


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", sorted(MESHES))
@pytest.mark.parametrize("rebalance", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_front_end_on_every_mesh(case, mesh_name, rebalance):
    if case == "exits" and rebalance:
        pytest.skip("the exit step has no escalated tier to rebalance")
    _check_front_end(case, mesh_name, rebalance)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_cascade_on_every_mesh(mesh_name):
    test_cascade_data_parallel_equals_one_device(mesh_name)


@pytest.mark.slow
def test_cascade_with_the_rules_table_placement():
    """Both tiers placed by `elang_jax.sharding.shard_model` (Megatron layout over
    "model"): the data-parallel step runs on them unchanged, with the same answers."""
    from elang_jax.sharding import make_mesh, shard_model

    mesh = make_mesh(data=4, model=2)
    swift, sup = _classifier(1, 1), _classifier(1, 2)
    cascade = Cascade([Tier(swift, TierConfig(name="a")), Tier(sup, TierConfig(name="b"))])
    batch = _batch()
    plain = cascade.serving_step(B)
    scores = np.asarray(plain(batch, thresholds=[math.inf]).scores[:, 0])
    kw = dict(thresholds=[float(np.median(scores))])
    ref = plain(batch, **kw)
    shard_model(swift, mesh)
    shard_model(sup, mesh)
    for rebalance in (False, True):
        out = cascade.serving_step(B, mesh=mesh, rebalance=rebalance)(batch, **kw)
        _assert_same(out, ref, ("predictions", "tier"), ("logits", "scores"))
