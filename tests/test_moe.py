"""The MoE FFN layer: parity with the dense FFN, implementations against the reference,
the drop rule, routers, MoEfication of a tiny BERT and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elang_jax import data
from elang_jax.models import BertConfig, BertForSequenceClassification, FeedForward
from elang_jax.moe import (
    GateKind,
    MoEConfig,
    MoEFeedForward,
    MoEImpl,
    RouterKind,
    RouterTrainConfig,
    SplitMethod,
    captured_mass,
    collect_ffn_inputs,
    merge_experts,
    moe_aux_loss,
    moefy,
    split,
    train_mlp_router,
)
from elang_jax.moe._routing import keep_mask, plan
from elang_jax.testing import assert_close

D, F = 16, 48


def _ffn(activation="relu", seed=0):
    ffn = FeedForward(D, F, activation=activation, rngs=nnx.Rngs(seed))
    # non-zero biases, so that bias handling is checked too
    ffn.w_in.bias[...] = 0.1 * jax.random.normal(jax.random.key(seed + 1), (F,))
    ffn.w_out.bias[...] = 0.1 * jax.random.normal(jax.random.key(seed + 2), (D,))
    return ffn


def _x(shape=(3, 7), seed=0):
    return jax.random.normal(jax.random.key(100 + seed), (*shape, D))


@pytest.mark.parametrize("impl", list(MoEImpl))
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_all_experts_active_equals_dense_ffn(impl, activation):
    ffn = _ffn(activation)
    partition = split(SplitMethod.RANDOM, 6, np.asarray(ffn.w_in.kernel[...]), seed=3)
    moe = MoEFeedForward.from_dense(ffn, MoEConfig(num_experts=6, top_k=6, impl=impl), partition)
    x = _x()
    assert_close(moe(x), ffn(x))


CONFIGS = {
    "topk_unweighted": MoEConfig(num_experts=6, top_k=2, router=RouterKind.MLP),
    "topk_softmax_capacity": MoEConfig(
        num_experts=6, top_k=2, router=RouterKind.LINEAR, gate=GateKind.SOFTMAX, capacity_factor=0.8
    ),
    "prototyping": MoEConfig(
        num_experts=6, top_k=2, num_groups=2, router=RouterKind.LINEAR, gate=GateKind.SOFTMAX
    ),
    "top1_centroid_renorm": MoEConfig(
        num_experts=4, top_k=1, router=RouterKind.CENTROID, gate=GateKind.SOFTMAX, renormalize=True
    ),
    "oracle": MoEConfig(num_experts=4, top_k=3, router=RouterKind.ORACLE),
}


def _moe(config, impl, seed=0):
    moe = MoEFeedForward(D, F, config.replace(impl=impl), activation="gelu", rngs=nnx.Rngs(seed))
    # non-zero biases and a non-trivial MLP router
    if moe.b_in is not None:
        moe.b_in[...] = 0.1 * jax.random.normal(jax.random.key(7), moe.b_in.shape)
    if moe.router_w2 is not None:
        moe.router_w2[...] = jax.random.normal(jax.random.key(8), moe.router_w2.shape)
    return moe


# RAGGED is slow-only: its grouped matmul (`ragged_dot`) is also what PALLAS runs, and on
# XLA CPU it is the slowest path to compile and run. CAPACITY (no longer the default: TILED
# runs the same capacity pass first) keeps two routings in the default run, the rest slow.
_SLOW_CAPACITY = {"oracle", "prototyping", "top1_centroid_renorm"}


def _slow(impl: MoEImpl, name: str) -> bool:
    return impl is MoEImpl.RAGGED or (impl is MoEImpl.CAPACITY and name in _SLOW_CAPACITY)


@pytest.mark.parametrize(
    "name, impl",
    [
        pytest.param(name, impl, marks=[pytest.mark.slow] if _slow(impl, name) else [])
        for name in sorted(CONFIGS)
        for impl in (MoEImpl.RAGGED, MoEImpl.CAPACITY, MoEImpl.PALLAS, MoEImpl.TILED)
    ],
)
def test_implementations_match_dense_reference_forward_and_gradient(name, impl):
    config = CONFIGS[name].replace(block_rows=8)
    ref, moe = _moe(config, MoEImpl.DENSE), _moe(config, impl)
    x = _x((2, 11))
    assert_close(moe(x), ref(x))

    def loss(module, x):
        out = module.apply(x)
        return jnp.sum(jnp.sin(out.output)) + out.aux_loss

    g_ref = nnx.grad(loss, argnums=(0, 1))(ref, x)
    g_got = nnx.grad(loss, argnums=(0, 1))(moe, x)
    assert_close(g_got[1], g_ref[1])
    ref_leaves = jax.tree.leaves(nnx.state(g_ref[0]))
    got_leaves = jax.tree.leaves(nnx.state(g_got[0]))
    assert len(ref_leaves) == len(got_leaves) > 0
    for got, want in zip(got_leaves, ref_leaves, strict=True):
        assert_close(got, want)


@pytest.mark.slow  # TILED (the default) has the same adversarial case in test_moe_tiled
def test_capacity_impl_dropless_with_every_token_on_one_expert():
    # A LINEAR router with a huge weight on one expert sends every token's first choice there:
    # the busiest expert holds n assignments, so the largest static bucket must be used.
    config = MoEConfig(num_experts=4, top_k=2, router=RouterKind.LINEAR, gate=GateKind.SOFTMAX)
    ref, moe = _moe(config, MoEImpl.DENSE), _moe(config, MoEImpl.CAPACITY)
    for m in (ref, moe):
        m.router_w[...] = jnp.zeros((D, 4)).at[:, 2].set(100.0)
    x = jnp.abs(_x((5, 3)))
    out = moe.apply(x)
    assert float(out.expert_load[2]) == 0.5  # half the assignments: every first choice
    assert float(out.dropped_fraction) == 0.0
    assert_close(out.output, ref(x))


def test_drop_rule_worked_example():
    # The example in elang_jax/moe/_routing.py: n=4, k=2, E=2, C=3.
    ids = jnp.array([[0, 1], [0, 1], [0, 1], [1, 0]])
    keep = keep_mask(plan(ids, 2), 4, 2, capacity=3)
    expected = [[True, True], [True, True], [True, False], [True, False]]
    np.testing.assert_array_equal(np.asarray(keep), expected)
    assert np.asarray(keep_mask(plan(ids, 2), 4, 2, capacity=None)).all()


def test_capacity_config():
    config = MoEConfig(num_experts=4, top_k=2, capacity_factor=1.25, min_capacity=2)
    assert config.capacity(10) == 7  # ceil(1.25 * 10 * 2 / 4)
    assert config.capacity(1) == 1  # never more than n
    assert MoEConfig(num_experts=4, top_k=2).capacity(10) is None
    # mean load 5: main buffer ceil(1.05 * 5) = 6, overflow chunks of ceil(0.5 * 5) = 3
    assert MoEConfig(num_experts=4, top_k=2).dropless_sizes(10) == (6, 3)


def test_prototyping_takes_one_expert_per_group():
    config = CONFIGS["prototyping"]
    out = _moe(config, MoEImpl.DENSE).apply(_x((4, 5)))
    ids = np.asarray(out.expert_ids)
    assert ids.shape == (20, 2)
    assert (ids[:, 0] < 3).all() and (ids[:, 1] >= 3).all()
    # gates: softmax within each group, at its argmax
    assert (np.asarray(out.gates) > 1 / 3 - 1e-6).all()


def test_aux_losses():
    config = MoEConfig(num_experts=4, top_k=1, router=RouterKind.LINEAR, gate=GateKind.SOFTMAX)
    moe = _moe(config, MoEImpl.DENSE)
    moe.router_w[...] = jnp.zeros((D, 4))
    out = moe.apply(_x((8, 8)))
    # uniform router probabilities: the Switch loss is 1 whatever the assignment
    assert_close(out.load_balance_loss, 1.0)
    assert_close(out.router_z_loss, jnp.log(4.0) ** 2)
    assert_close(out.expert_load.sum(), 1.0)


def test_centroid_router_prefers_the_expert_the_token_points_at():
    ffn = _ffn("relu")
    moe = MoEFeedForward.from_dense(ffn, MoEConfig(num_experts=4, top_k=1, router="centroid"))
    c = moe.centroids()
    assert np.array_equal(np.argmax(moe.router_logits(c), -1), np.arange(4))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(num_experts=4, top_k=5), "top_k must be <= num_experts"),
        (dict(num_experts=0, top_k=1), "num_experts must be a positive int"),
        (dict(num_experts=6, top_k=2, num_groups=4), "num_groups must divide"),
        (dict(num_experts=6, top_k=3, num_groups=2), "multiple of num_groups"),
        (dict(num_experts=4, top_k=2, impl="cuda"), "impl must be one of"),
        (dict(num_experts=4, top_k=2, capacity_factor=0.0), "capacity_factor must be positive"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        MoEConfig(**kw)


def test_layer_errors():
    with pytest.raises(ValueError, match="d_ff must be divisible by num_experts"):
        MoEFeedForward(D, 50, MoEConfig.tiny(num_experts=4), activation="relu", rngs=nnx.Rngs(0))
    moe = MoEFeedForward(D, F, MoEConfig.tiny(), activation="relu", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="x must have shape \\[..., 16\\]"):
        moe(jnp.zeros((3, 8)))
    ffn = _ffn()
    with pytest.raises(ValueError, match="permutation"):
        MoEFeedForward.from_dense(ffn, MoEConfig.tiny(), np.zeros((4, 12), int))
    gated = FeedForward(D, F, activation="relu", gated=True, rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="gated"):
        MoEFeedForward.from_dense(gated, MoEConfig.tiny())


@pytest.mark.parametrize("method", list(SplitMethod))
def test_splits_are_balanced_permutations(method, rng):
    w_in = rng.randn(D, F)
    active = rng.rand(200, F) > 0.7
    part = split(method, 6, w_in, active, seed=0)
    assert part.shape == (6, 8)
    assert sorted(part.ravel().tolist()) == list(range(F))


def test_kmeans_split_groups_similar_neurons(rng):
    # three planted directions, 16 neurons each: balanced k-means must recover them
    dirs = rng.randn(3, D)
    labels = np.repeat(np.arange(3), 16)
    w_in = (dirs[labels] + 0.05 * rng.randn(F, D)).T
    part = split(SplitMethod.KMEANS, 3, w_in, seed=1)
    assert sorted(tuple(sorted(set(labels[p]))) for p in part) == [(0,), (1,), (2,)]


def test_coactivation_split_groups_coactive_neurons(rng):
    # neurons fire in 4 planted groups of 12: the graph partition must recover them
    groups = rng.permutation(F).reshape(4, 12)
    topic = rng.randint(0, 4, size=400)
    active = np.zeros((400, F), bool)
    for t in range(400):
        active[t, groups[topic[t]]] = rng.rand(12) > 0.2
    part = split(SplitMethod.COACTIVATION, 4, rng.randn(D, F), active)
    assert sorted(map(sorted, part.tolist())) == sorted(map(sorted, groups.tolist()))


def test_merge_experts():
    part = np.arange(F).reshape(8, 6)
    merged = merge_experts(part, np.random.RandomState(0).randn(D, F), group=2)
    assert merged.shape == (4, 12)
    assert sorted(merged.ravel().tolist()) == list(range(F))
    with pytest.raises(ValueError, match="group must divide"):
        merge_experts(part, np.zeros((D, F)), group=3)


def test_mlp_router_learns_the_activation_mass(rng):
    # Tokens come from 4 clusters, each exciting one expert's neurons only: a trained router
    # should capture nearly all the mass the oracle does with top-1.
    ffn = FeedForward(D, F, activation="relu", rngs=nnx.Rngs(0))
    centers = rng.randn(4, D)
    w = np.zeros((D, F))
    for e in range(4):
        w[:, e * 12 : (e + 1) * 12] = centers[e][:, None] + 0.3 * rng.randn(D, 12)
    ffn.w_in.kernel[...] = jnp.asarray(w, jnp.float32)
    ffn.w_in.bias[...] = -2.0 * jnp.ones(F)
    moe = MoEFeedForward.from_dense(ffn, MoEConfig(num_experts=4, top_k=1, router="mlp"))
    moe.router_w1[...] = jnp.asarray(rng.randn(D, 4), jnp.float32)  # forget the centroid init
    x = centers[rng.randint(0, 4, 4000)] + 0.5 * rng.randn(4000, D)
    report = train_mlp_router(moe, x, RouterTrainConfig(epochs=10, batch_size=128))
    assert report["captured_mass"] > 0.95 * report["oracle_mass"], report
    xs = jnp.asarray(x[:500], jnp.float32)
    mass = moe.activation_mass(xs)
    assert float(captured_mass(moe.router_logits(xs), mass, 1)) > 0.9 * float(
        captured_mass(mass, mass, 1)
    )


def _tiny_bert():
    config = BertConfig.tiny(vocab_size=50, intermediate_size=48, hidden_act="relu")
    return BertForSequenceClassification(config, rngs=nnx.Rngs(0))


def _batch(rng) -> data.Batch:
    """A padded batch of 4 rows (the last one padding), as the data pipeline makes them."""
    mask = np.ones((4, 9), np.int32)
    mask[1, 6:] = 0
    return data.Batch(
        input_ids=rng.randint(1, 50, (4, 9)),
        attention_mask=mask,
        token_type_ids=np.zeros((4, 9), np.int32),
        labels=rng.randint(0, 2, 4),
        valid=np.array([True, True, True, False]),
        index=np.array([0, 1, 2, -1]),
    )


def _logits(model, batch: data.Batch):
    return model(batch.input_ids, batch.attention_mask, batch.token_type_ids).logits


@pytest.mark.parametrize(
    "method",
    # One split by default: the equality holds for any partition; the others run under slow.
    [
        m if m is SplitMethod.KMEANS else pytest.param(m, marks=pytest.mark.slow)
        for m in SplitMethod
    ],
)
def test_moefy_with_every_expert_equals_the_dense_model(method, rng):
    model, batch = _tiny_bert(), _batch(rng)
    inputs = collect_ffn_inputs(model, [batch, batch])
    assert len(inputs) == 2 and inputs[0].shape == (2 * (9 + 6 + 9), 32)
    config = MoEConfig(num_experts=4, top_k=4, impl=MoEImpl.CAPACITY)
    moefied, reports = moefy(
        model,
        config,
        method=method,
        ffn_inputs=inputs,
        router_training=RouterTrainConfig(epochs=1, batch_size=8),
        copy=True,
    )
    assert isinstance(model.encoder.layers[0].ffn, FeedForward)  # copy=True left it alone
    assert all(isinstance(layer.ffn, MoEFeedForward) for layer in moefied.encoder.layers)
    assert len(reports) == 2
    assert_close(_logits(moefied, batch), _logits(model, batch))


def test_moefy_in_place_and_errors(rng):
    model, batch = _tiny_bert(), _batch(rng)
    dense_logits = _logits(model, batch)
    with pytest.raises(ValueError, match="needs ffn_inputs"):
        moefy(model, MoEConfig(num_experts=4, top_k=2))
    with pytest.raises(ValueError, match="d_ff must be divisible"):
        moefy(model, MoEConfig(num_experts=5, top_k=2, router="centroid"))
    same, _ = moefy(model, MoEConfig(num_experts=4, top_k=1, router="centroid"))
    assert same is model and isinstance(model.encoder.layers[1].ffn, MoEFeedForward)
    sparse_logits = _logits(model, batch)
    assert not np.allclose(np.asarray(sparse_logits), np.asarray(dense_logits))
    with pytest.raises(TypeError, match="not a dense FeedForward"):
        moefy(model, MoEConfig(num_experts=4, top_k=1, router="centroid"))


def test_calibrate_moefied_trains_all_but_the_routers(rng):
    from elang_jax import training
    from elang_jax.moe import calibrate_moefied

    model, batch = _tiny_bert(), _batch(rng)
    inputs = collect_ffn_inputs(model, [batch])
    config = MoEConfig(num_experts=4, top_k=1, impl=MoEImpl.CAPACITY)
    moefy(
        model, config, ffn_inputs=inputs, router_training=RouterTrainConfig(epochs=1, batch_size=8)
    )
    ffn = model.encoder.layers[0].ffn
    router, w_in = np.asarray(ffn.router_w1[...]), np.asarray(ffn.w_in[...])
    ft = training.tiny("unused-tokenizer-dir", learning_rate=1e-2, warmup_ratio=0.0)
    losses = calibrate_moefied(model, [batch] * 3, 3, ft)
    assert len(losses) == 3 and np.isfinite(losses).all()
    np.testing.assert_array_equal(np.asarray(ffn.router_w1[...]), router)
    assert not np.allclose(np.asarray(ffn.w_in[...]), w_in)
    with pytest.raises(ValueError, match="batches ran out after 1 of 2"):
        calibrate_moefied(model, [batch], 2, ft)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        calibrate_moefied(model, [batch], 0, ft)


@pytest.mark.slow  # heavy; the default run keeps the suite under 12 minutes on 2 cores
def test_trainable_moe_in_a_backbone_sows_aux_losses(rng):
    model, batch = _tiny_bert(), _batch(rng)
    for layer in model.encoder.layers:
        layer.ffn = MoEFeedForward(
            32,
            48,
            MoEConfig.switch(num_experts=4),
            activation="relu",
            sow_aux=True,
            rngs=nnx.Rngs(1),
        )

    def loss(model):
        logits = _logits(model, batch)
        return jnp.mean(logits**2) + moe_aux_loss(model)

    value, grads = nnx.value_and_grad(loss)(model)
    assert np.isfinite(float(value))
    g = grads.encoder.layers[0].ffn.router_w[...]
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0


def test_full_size_preset_shapes():
    config = MoEConfig.minilm_moefication(0.25, impl=MoEImpl.CAPACITY)
    assert (config.num_experts, config.top_k) == (8, 2)

    def build():
        return MoEFeedForward(384, 1536, config, activation="gelu", rngs=nnx.Rngs(0))

    moe = nnx.eval_shape(build)
    assert moe.w_in.shape == (8, 384, 192) and moe.w_out.shape == (8, 192, 384)


@pytest.mark.parametrize("busiest", [0, 1, 3, 6, 12, 24])
def test_capacity_impl_overflow_loop(busiest, rng):
    # n=24 tokens, k=2, E=4: mean load 12, main buffer ceil(1.05 * 12) = 13, overflow chunks
    # of 6. Expert 0 gets `busiest` first choices on top of a random spread, so the overflow
    # loop makes from zero trips (balanced) up to (24 - 13) / 3 rounded up.
    from elang_jax.models._common import activation_fn
    from elang_jax.moe import _experts

    n, e = 24, 4
    first = rng.randint(0, e, n)
    first[:busiest] = 0
    second = (first + 1 + rng.randint(0, e - 1, n)) % e
    ids = jnp.asarray(np.stack([first, second], 1), jnp.int32)
    gates = jnp.asarray(rng.uniform(0.1, 1.0, (n, 2)), jnp.float32)
    config = MoEConfig(num_experts=e, top_k=2, impl=MoEImpl.CAPACITY)
    moe = MoEFeedForward.from_dense(_ffn(), config)
    x = jax.random.normal(jax.random.key(0), (n, D))
    args = (x, ids, gates, plan(ids, e), moe.weights(), activation_fn("relu"), config)
    assert_close(_experts.run(MoEImpl.CAPACITY, *args), _experts.run(MoEImpl.DENSE, *args))
