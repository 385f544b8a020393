"""The mesh, the logical-axis rules and their coverage of every backbone's parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from elang_jax.exits import MultiExit, MultiExitConfig
from elang_jax.models import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
)
from elang_jax.moe import MoEConfig, MoEFeedForward
from elang_jax.sharding import (
    MESH_AXES,
    UnknownParameterError,
    axes_for_path,
    batch_sharding,
    logical_axes,
    make_mesh,
    param_shardings,
    resolve_spec,
    shard_model,
)


def _moe_bert() -> nnx.Module:
    model = BertForSequenceClassification(BertConfig.tiny(intermediate_size=64), rngs=nnx.Rngs(0))
    for i, router in enumerate(("linear", "mlp")):
        layer = model.encoder.layers[i]
        config = MoEConfig.tiny(router=router)
        layer.ffn = MoEFeedForward(32, 64, config, activation="gelu", rngs=nnx.Rngs(i))
    return model


def _expert_parallel_bert() -> nnx.Module:
    from elang_jax.moe import ExpertParallelFFN

    model = _moe_bert()
    layer = model.encoder.layers[0]
    layer.ffn = ExpertParallelFFN(layer.ffn, make_mesh(expert=8))  # pyright: ignore
    return model


BUILDERS = {
    "bert_cls": lambda: BertForSequenceClassification(BertConfig.tiny(), rngs=nnx.Rngs(0)),
    "bert_base": lambda: BertModel(BertConfig.tiny(), rngs=nnx.Rngs(0)),
    "roberta_mlm": lambda: BertForMaskedLM(BertConfig.tiny(model_type="roberta"), rngs=nnx.Rngs(0)),
    "mpnet_cls": lambda: BertForSequenceClassification(
        BertConfig.tiny(model_type="mpnet"), rngs=nnx.Rngs(0)
    ),
    "mpnet_mlm": lambda: BertForMaskedLM(BertConfig.tiny(model_type="mpnet"), rngs=nnx.Rngs(0)),
    "t5_v1_0": lambda: T5ForConditionalGeneration(T5Config.tiny(), rngs=nnx.Rngs(0)),
    "t5_v1_1": lambda: T5ForConditionalGeneration(T5Config.tiny_v1_1(), rngs=nnx.Rngs(0)),
    "t5_encoder": lambda: T5EncoderModel(T5Config.tiny(), rngs=nnx.Rngs(0)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config.tiny(), rngs=nnx.Rngs(0)),
    "moe_bert": _moe_bert,
    "expert_parallel_bert": _expert_parallel_bert,
    "multi_exit": lambda: MultiExit(
        BertForSequenceClassification(BertConfig.tiny(), rngs=nnx.Rngs(0)),
        MultiExitConfig(exit_layers=(1, 2), mix_cls=True),
        rngs=nnx.Rngs(1),
    ),
}


def test_make_mesh_axes_and_errors():
    mesh = make_mesh(data=4, model=2)
    assert mesh.axis_names == MESH_AXES
    assert mesh.devices.shape == (4, 1, 2)
    assert make_mesh(expert=8).devices.shape == (1, 8, 1)
    assert make_mesh(data=2, devices=jax.devices()[:2]).devices.shape == (2, 1, 1)
    with pytest.raises(ValueError, match="needs 6 devices, but 8"):
        make_mesh(data=3, model=2)
    with pytest.raises(ValueError, match="needs 2 devices, but 3 are given"):
        make_mesh(data=2, devices=jax.devices()[:3])
    with pytest.raises(ValueError, match="model must be a positive int"):
        make_mesh(model=0)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_parameter_has_logical_axes(name):
    # abstract: no parameter is allocated
    model = nnx.eval_shape(BUILDERS[name])
    axes = logical_axes(model)
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    named = dict(nnx.to_flat_state(axes))
    assert len(named) == len(params) > 0
    for path, var in params:
        assert len(named[path]) == len(var.shape), path
    # every variable gets a sharding on any mesh, parameters by the rules
    shardings = param_shardings(model, make_mesh(data=2, model=4))
    assert len(nnx.to_flat_state(shardings)) == len(nnx.to_flat_state(nnx.state(model)))


def test_megatron_layout():
    get = {
        "encoder/layers/0/attention/query/kernel": P(None, "model"),
        "encoder/layers/0/attention/query/bias": P("model"),
        "encoder/layers/0/attention/output/kernel": P("model", None),
        "encoder/layers/0/attention/output/bias": P(None),
        "encoder/layers/0/ffn/w_in/kernel": P(None, "model"),
        "encoder/layers/0/ffn/w_out/kernel": P("model", None),
        "encoder/layers/1/ffn/w_in": P("expert", None, None),  # MoE experts
        "encoder/layers/1/ffn/w_out": P("expert", None, None),
        "encoder/layers/1/ffn/router_w1": P(None, None),
        "encoder/embeddings/word/embedding": P(None, None),  # 99 rows: not divisible
        "encoder/embeddings/norm/scale": P(None),
    }
    model = nnx.eval_shape(_moe_bert)
    model.encoder.layers[0].ffn = (
        nnx.eval_shape(
            lambda: BertForSequenceClassification(
                BertConfig.tiny(intermediate_size=64), rngs=nnx.Rngs(0)
            )
        )
        .encoder.layers[0]
        .ffn
    )
    mesh = make_mesh(data=2, expert=2, model=2)
    flat = {
        "/".join(map(str, path)): s.spec
        for path, s in nnx.to_flat_state(param_shardings(model, mesh))
    }
    for path, spec in get.items():
        assert flat[path] == spec, (path, flat[path])


def test_unknown_parameter_is_an_error():
    class Extra(nnx.Module):
        def __init__(self):
            self.encoder = BertModel(BertConfig.tiny(), rngs=nnx.Rngs(0))
            self.mystery = nnx.Param(jnp.zeros((4, 4)))

    with pytest.raises(UnknownParameterError, match="'mystery'"):
        logical_axes(nnx.eval_shape(Extra))
    with pytest.raises(UnknownParameterError, match="has 3 dimensions"):
        axes_for_path("encoder/layers/0/attention/query/kernel", 3)


def test_resolve_spec_rules():
    mesh = make_mesh(data=2, expert=2, model=2)
    assert resolve_spec(("batch", None), (8, 3), mesh) == P(("data", "expert"), None)
    assert resolve_spec(("vocab", "embed"), (99, 32), mesh) == P(None, None)
    assert resolve_spec(("vocab", "embed"), (100, 32), mesh) == P("model", None)
    # a mesh axis is used once: the second "heads" stays replicated
    assert resolve_spec(("heads", "heads"), (4, 4), mesh) == P("model", None)
    with pytest.raises(ValueError, match="'nope' has no rule"):
        resolve_spec(("nope",), (4,), mesh)
    custom = (("vocab", None), ("embed", "model"))
    assert resolve_spec(("vocab", "embed"), (100, 32), mesh, custom) == P(None, "model")


def test_shard_model_places_in_place_and_keeps_values():
    config = BertConfig.tiny(intermediate_size=64, num_layers=1)
    model = BertForSequenceClassification(config, rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model))
    mesh = make_mesh(data=4, model=2)
    assert shard_model(model, mesh) is model
    kernel = model.encoder.layers[0].ffn.w_in.kernel[...]
    assert kernel.sharding.spec == P(None, "model")
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (
        32,
        32,
    )
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(model)))
    assert batch_sharding(mesh).spec == P(("data", "expert"), None)
    assert batch_sharding(mesh, 1).spec == P(("data", "expert"))
