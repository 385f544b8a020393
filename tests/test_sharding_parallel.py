"""Tensor-parallel and data-parallel forwards equal the unsharded forward, per backbone."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elang_jax.models import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
)
from elang_jax.sharding import batch_sharding, make_mesh, param_shardings, shard_model
from elang_jax.testing import assert_close

# Sizes every mesh axis divides (8 heads, FFN 64, vocabulary 128), so that the model axis
# really splits heads, FFN columns and the vocabulary; one layer (each layer is sharded
# alike, and compiling is what these tests spend their time on).
_SIZES = dict(vocab_size=128, num_heads=8, intermediate_size=64, num_layers=1)


def _build(name: str) -> nnx.Module:
    if name == "bert":
        return BertForSequenceClassification(
            BertConfig.tiny(num_labels=3, **_SIZES), rngs=nnx.Rngs(0)
        )
    if name == "mpnet":
        return BertForSequenceClassification(
            BertConfig.tiny(model_type="mpnet", num_labels=3, **_SIZES), rngs=nnx.Rngs(0)
        )
    if name == "t5":
        config = T5Config.tiny_v1_1(
            vocab_size=128, num_heads=8, d_kv=4, d_ff=64, num_layers=1, num_decoder_layers=1
        )
        return T5ForConditionalGeneration(config, rngs=nnx.Rngs(0))
    return GPT2LMHeadModel(GPT2Config.tiny(vocab_size=128, n_head=8, n_layer=1), rngs=nnx.Rngs(0))


def _inputs(name: str) -> tuple[np.ndarray, ...]:
    rng = np.random.RandomState(1)
    ids = rng.randint(3, 128, (8, 12)).astype(np.int32)
    mask = np.ones((8, 12), np.int32)
    mask[::2, 9:] = 0  # padding on half the rows
    if name == "t5":
        return ids, mask, rng.randint(0, 128, (8, 5)).astype(np.int32)
    return ids, mask


def _logits(model, *inputs):
    return model(*inputs).logits


# The default run covers each backbone once and each mesh kind once; the slow run, all.
_LIGHT = [("bert", (4, 2)), ("mpnet", (4, 2)), ("t5", (4, 2)), ("gpt2", (8, 1))]
_ALL = [
    (name, shape)
    for name in ("bert", "mpnet", "t5", "gpt2")
    for shape in ((4, 2), (1, 8), (8, 1))
    if (name, shape) not in _LIGHT
]


@pytest.mark.parametrize(
    "name,shape",
    _LIGHT + [pytest.param(n, s, marks=pytest.mark.slow) for n, s in _ALL],
    ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else v,
)
def test_sharded_forward_equals_unsharded(name, shape):
    inputs = _inputs(name)
    forward = jax.jit(_logits)
    model = _build(name)
    expected = np.asarray(forward(model, *inputs))
    mesh = make_mesh(data=shape[0], model=shape[1])
    model = shard_model(nnx.clone(model), mesh)
    placed = [jax.device_put(x, batch_sharding(mesh)) for x in inputs]
    compiled = forward.lower(model, *placed).compile()
    got = compiled(model, *placed)
    if shape[1] > 1 and name in ("bert", "mpnet"):
        # Megatron: one all-reduce after attention, one after the FFN, one for the
        # vocabulary-split embedding lookup; no weight is ever gathered
        hlo = compiled.as_text()
        assert len(re.findall(r" all-reduce\(", hlo)) == 3 and " all-gather(" not in hlo
    # the model axis really split the weights, and the batch stays split over data
    if shape[1] > 1:
        layers = model.transformer.layers if name == "gpt2" else model.encoder.layers
        kernel = layers[0].attention.query.kernel[...]
        assert kernel.addressable_shards[0].data.shape[1] == kernel.shape[1] // shape[1]
    if shape[0] > 1:
        assert got.addressable_shards[0].data.shape[0] == 8 // shape[0]
    got = np.asarray(got)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    assert_close(got, expected)


def _flat_arrays(model) -> dict:
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.parametrize(
    "name,head",
    [
        ("bert", "sequence_classification"),
        ("mpnet", "masked_lm"),
        ("t5", "seq2seq_lm"),
        ("gpt2", "causal_lm"),
    ],
)
def test_from_pretrained_onto_a_mesh(tmp_path, name, head):
    from elang_jax.hf import from_pretrained, save_pretrained
    from elang_jax.models import BertForMaskedLM

    if name == "mpnet":
        model = BertForMaskedLM(BertConfig.tiny(model_type="mpnet", **_SIZES), rngs=nnx.Rngs(0))
    else:
        model = _build(name)
    save_pretrained(model, tmp_path)
    mesh = make_mesh(data=2, model=4)
    loaded = from_pretrained(tmp_path, head, mesh=mesh)
    plain = from_pretrained(tmp_path, head)
    got, want = _flat_arrays(loaded), _flat_arrays(plain)
    assert got.keys() == want.keys()
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))
    # every array lives on the mesh, in its rule's placement
    placements = dict(nnx.to_flat_state(param_shardings(plain, mesh)))
    for path, var in nnx.to_flat_state(nnx.state(loaded)):
        assert var.get_value().sharding == placements[path].get_value(), path


@pytest.mark.slow
def test_from_pretrained_initialises_a_new_head_sharded(tmp_path):
    from elang_jax.hf import from_pretrained, save_pretrained
    from elang_jax.models import BertModel

    save_pretrained(BertModel(BertConfig.tiny(**_SIZES), rngs=nnx.Rngs(0)), tmp_path)
    mesh = make_mesh(data=4, model=2)
    loaded = from_pretrained(tmp_path, "sequence_classification", num_labels=4, mesh=mesh)
    plain = from_pretrained(tmp_path, "sequence_classification", num_labels=4)
    got, want = _flat_arrays(loaded), _flat_arrays(plain)
    for path in want:  # the new head too: the same seed draws the same weights
        np.testing.assert_array_equal(got[path], want[path], err_msg=str(path))
    assert loaded.head.out.kernel[...].sharding.mesh.devices.size == 8


# -- expert parallel MoE ---------------------------------------------------------------------


def _moe(**kw):
    from elang_jax.moe import MoEConfig, MoEFeedForward

    config = MoEConfig(
        **{"num_experts": 8, "top_k": 2, "router": "linear", "gate": "softmax", **kw}
    )
    return MoEFeedForward(16, 64, config, activation="relu", rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "shape,capacity_factor",
    [((2, 4), 1.0), pytest.param((1, 8), None, marks=pytest.mark.slow)]
    + [pytest.param((8, 1), 1.0, marks=pytest.mark.slow)],
    ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else f"cf={v}",
)
def test_expert_parallel_equals_unsharded(shape, capacity_factor):
    from elang_jax.moe import expert_parallel_apply

    moe = _moe(capacity_factor=capacity_factor)
    x = jax.random.normal(jax.random.key(1), (4, 8, 16))
    expected = jax.jit(lambda m, x: m.apply(x))(moe, x)
    mesh = make_mesh(data=shape[0], expert=shape[1])
    shard_model(moe, mesh)
    assert moe.w_in[...].addressable_shards[0].data.shape[0] == 8 // shape[1]
    got = jax.jit(lambda m, x: expert_parallel_apply(m, x, mesh))(moe, x)
    np.testing.assert_array_equal(got.moe.expert_ids, expected.expert_ids)
    np.testing.assert_array_equal(got.moe.gates, expected.gates)  # the same drops
    assert_close(got.moe.output, expected.output)
    for name in ("dropped_fraction", "expert_load", "load_balance_loss", "router_z_loss"):
        assert_close(getattr(got.moe, name), getattr(expected, name), err_msg=name)
    assert float(got.overflow_fraction) == 0.0
    if capacity_factor is not None:
        assert float(expected.dropped_fraction) > 0  # the capacity rule did drop something


def test_expert_parallel_buffer_overflow_drops_and_reports():
    from elang_jax.models._common import activation_fn
    from elang_jax.moe import ExpertParallelConfig, _experts, _routing, expert_parallel_apply

    moe = _moe(gate="none")  # gates of 1: a dropped assignment shows as a 0
    # every token prefers expert 0: a buffer of the mean load overflows
    moe.router_w[...] = moe.router_w[...].at[:, 0].add(10.0)
    x = jnp.abs(jax.random.normal(jax.random.key(2), (32, 16)))
    mesh = make_mesh(data=2, expert=4)
    config = ExpertParallelConfig.tiny()
    got = jax.jit(lambda m, x: expert_parallel_apply(m, x, mesh, config))(moe, x)
    expected = jax.jit(lambda m, x: m.apply(x))(moe, x)
    overflow = float(got.overflow_fraction)
    assert overflow > 0
    assert_close(got.moe.dropped_fraction, overflow)
    gates, want = np.asarray(got.moe.gates), np.asarray(expected.gates)
    dropped = gates != want
    assert dropped.any() and (gates[dropped] == 0).all()  # overflow zeroes a gate, no more
    assert dropped.sum() == round(overflow * gates.size)
    # what ran is exactly the unsharded experts with those gates
    ids = got.moe.expert_ids
    plan = _routing.plan(ids, 8)
    act = activation_fn("relu")
    dense = jax.jit(_experts.run_dense, static_argnums=(5, 6))
    y = dense(x, ids, got.moe.gates, plan, moe.weights(), act, moe.config)
    assert_close(got.moe.output, y + moe.b_out[...][None, :])


@pytest.mark.slow
def test_expert_parallel_ffn_in_a_model():
    from elang_jax.moe import ExpertParallelFFN, MoEConfig, MoEFeedForward

    config = BertConfig.tiny(num_labels=3, vocab_size=128, intermediate_size=64, num_layers=1)
    model = BertForSequenceClassification(config, rngs=nnx.Rngs(0))
    moe_config = MoEConfig(num_experts=4, top_k=2, router="linear", gate="softmax")
    model.encoder.layers[0].ffn = MoEFeedForward(
        32, 64, moe_config, activation="gelu", rngs=nnx.Rngs(1)
    )
    ids, mask = _inputs("bert")
    forward = jax.jit(_logits)
    expected = np.asarray(forward(model, ids, mask))
    mesh = make_mesh(data=2, expert=4)
    model.encoder.layers[0].ffn = ExpertParallelFFN(model.encoder.layers[0].ffn, mesh)
    shard_model(model, mesh)
    got = np.asarray(
        forward(model, *[jax.device_put(a, batch_sharding(mesh)) for a in (ids, mask)])
    )
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    assert_close(got, expected)


def test_expert_parallel_errors():
    from elang_jax.moe import MoEConfig, MoEFeedForward, expert_parallel_apply

    def abstract(d_ff: int, config: MoEConfig) -> MoEFeedForward:
        # the checks come before any computation: an abstract layer is enough
        return nnx.eval_shape(
            lambda: MoEFeedForward(16, d_ff, config, activation="relu", rngs=nnx.Rngs(0))
        )

    x = jnp.zeros((8, 16))
    mesh = make_mesh(expert=8)
    with pytest.raises(NotImplementedError, match="learned router"):
        expert_parallel_apply(abstract(64, MoEConfig.tiny(router="oracle")), x, mesh)
    six = MoEConfig(num_experts=6, top_k=2, router="linear")
    with pytest.raises(ValueError, match="must divide num_experts"):
        expert_parallel_apply(abstract(48, six), x, mesh)
    eight = MoEConfig(num_experts=8, top_k=2, router="linear")
    with pytest.raises(ValueError, match="12 tokens do not divide"):
        expert_parallel_apply(abstract(64, eight), jnp.zeros((12, 16)), mesh)
