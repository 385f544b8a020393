"""ACC token pruning: schedules, scores, selection, cost model, and the three backbones."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from elang_jax.models import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
    t5_greedy_from_encoder,
)
from elang_jax.pruning import (
    AccConfig,
    AccVariant,
    KeepSchedule,
    LayerDims,
    Profile,
    acc_classify,
    acc_generate,
    acc_prefill,
    acc_scores,
    acc_t5_encode,
    predicted_speedup,
    select_tokens,
    stack_flops,
    tune_schedule,
)
from elang_jax.testing import assert_close

VARIANTS = [AccVariant.ATTENTION, AccVariant.VALUE_NORM]
# The variants differ only in the score; the heavier equivalence tests run VALUE_NORM slow.
VARIANTS_LIGHT = [AccVariant.ATTENTION, pytest.param(AccVariant.VALUE_NORM, marks=pytest.mark.slow)]


# ------------------------------------------------------------------------------------------
# Schedules and config


def test_schedule_worked_examples():
    geo = KeepSchedule.from_speed(0.5, 6, AccConfig(min_tokens=2))
    assert geo.counts(32) == (32, 16, 8, 4, 2, 2)
    lin = KeepSchedule.from_speed(0.25, 6, AccConfig(profile=Profile.LINEAR, min_tokens=2))
    assert lin.counts(32) == (32, 28, 23, 18, 13, 8)
    late = KeepSchedule.from_speed(0.5, 4, AccConfig(first_pruned_layer=2, min_tokens=1))
    assert late.counts(16) == (16, 16, 8, 4)
    assert KeepSchedule.from_speed(1.0, 6).counts(37) == (37,) * 6
    # The floor never exceeds the length; counts are Python ints.
    short = KeepSchedule.from_speed(0.1, 3, AccConfig(min_tokens=4)).counts(3)
    assert short == (3, 3, 3) and all(type(n) is int for n in short)
    assert geo.table((16, 32)) == {16: geo.counts(16), 32: geo.counts(32)}


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.01, 1.0),
    layers=st.integers(1, 12),
    length=st.integers(1, 300),
    profile=st.sampled_from(list(Profile)),
)
def test_schedule_counts_shrink_with_depth(rate, layers, length, profile):
    counts = KeepSchedule.from_speed(rate, layers, AccConfig(profile=profile)).counts(length)
    assert counts[0] == length and len(counts) == layers
    assert all(a >= b >= 1 for a, b in zip(counts, counts[1:], strict=False))
    milder = KeepSchedule.from_speed(min(1.0, rate + 0.1), layers, AccConfig(profile=profile))
    assert all(a >= b for a, b in zip(milder.counts(length), counts, strict=True))


def test_config_validation():
    with pytest.raises(ValueError, match="rate must lie in"):
        KeepSchedule.from_speed(0.0, 6)
    with pytest.raises(ValueError, match="rate must lie in"):
        KeepSchedule.from_speed(1.5, 6)
    with pytest.raises(ValueError, match="min_tokens must be >="):
        AccConfig(keep_first=1, keep_last=1, min_tokens=1)
    with pytest.raises(ValueError, match="variant must be one of"):
        AccConfig(variant="bogus")
    with pytest.raises(ValueError, match="first_pruned_layer must be >= 1"):
        AccConfig(first_pruned_layer=0)


# ------------------------------------------------------------------------------------------
# Scores and selection


def test_acc_scores_by_hand():
    # One head, 3 tokens, the last is padding (its query does not vote).
    probs = jnp.asarray([[[[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.9, 0.05, 0.05]]]])
    mask = jnp.asarray([[1, 1, 0]])
    np.testing.assert_allclose(acc_scores(probs, mask), [[0.35, 0.65, 0.0]], atol=1e-6)
    # Value norms 2, 1, 3 (head width 2): [0.7, 0.65, 0] / 2 queries.
    values = jnp.asarray([[[[2.0, 0.0]], [[0.0, 1.0]], [[3.0, 0.0]]]])
    np.testing.assert_allclose(
        acc_scores(probs, mask, values=values), [[0.7, 0.65, 0.0]], atol=1e-6
    )
    # Causal: key 1 is seen by query 1 only (query 2 is padding), key 0 by queries 0 and 1.
    causal = jnp.asarray([[[[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.9, 0.05, 0.05]]]])
    pos = jnp.asarray([[0, 1, 2]])
    np.testing.assert_allclose(
        acc_scores(causal, mask, causal_positions=pos), [[0.6, 0.8, 0.0]], atol=1e-6
    )


def test_select_tokens_worked_example():
    scores = jnp.asarray([[0.1, 0.3, 0.1, 0.5, 0.9, 0.9]])
    mask = jnp.asarray([[1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(select_tokens(scores, 3, mask, keep_first=1), [[0, 1, 3]])
    # More slots than real tokens: all real tokens, then padding in column order.
    np.testing.assert_array_equal(select_tokens(scores, 5, mask, keep_first=1), [[0, 1, 2, 3, 4]])
    # keep_last protects the last column even with the lowest score.
    low_last = jnp.asarray([[0.5, 0.4, 0.3, 0.0]])
    ones = jnp.ones((1, 4), jnp.int32)
    np.testing.assert_array_equal(select_tokens(low_last, 2, ones, keep_last=1), [[0, 3]])
    with pytest.raises(ValueError, match="num_keep must lie in"):
        select_tokens(scores, 7, mask)


# ------------------------------------------------------------------------------------------
# Cost model and offline tuning


def test_stack_flops_linear_and_quadratic_terms():
    dims = LayerDims(d_model=8, inner=8, d_ff=16, num_heads=2, num_layers=2)
    # Layer on n tokens: 8 n d i + 4 n^2 i + 4 n d f; a scoring layer adds 2 h n^2.
    layer = lambda n: 8 * n * 8 * 8 + 4 * n * n * 8 + 4 * n * 8 * 16
    assert stack_flops(dims, (4, 4)) == 2 * layer(4)
    assert stack_flops(dims, (4, 2)) == layer(4) + 2 * 2 * 4 * 4 + layer(2)


def test_predicted_speedup_and_tuning():
    dims = LayerDims.of(BertConfig.minilm_l6())
    workload = {16: 300, 32: 400, 64: 172}
    config = AccConfig.bert()
    full = KeepSchedule.from_speed(1.0, 6, config)
    assert predicted_speedup(dims, full, workload) == 1.0
    speeds = [
        predicted_speedup(dims, KeepSchedule.from_speed(r, 6, config), workload)
        for r in (0.9, 0.7, 0.5, 0.3)
    ]
    assert speeds == sorted(speeds) and speeds[0] > 1.0
    for target in (1.5, 2.0, 3.0):
        schedule = tune_schedule(target, dims, workload, config)
        assert predicted_speedup(dims, schedule, workload) >= target
        milder = KeepSchedule.from_speed(min(1.0, schedule.rate + 2e-3), 6, config)
        assert predicted_speedup(dims, milder, workload) < target + 0.05
    with pytest.raises(ValueError, match="out of reach"):
        tune_schedule(50.0, dims, workload, config)


# ------------------------------------------------------------------------------------------
# BERT-family classifier


def _bert(layers=3):
    return BertForSequenceClassification(BertConfig.tiny(num_layers=layers), rngs=nnx.Rngs(0))


def _batch(rng, lengths, t, vocab=99):
    ids = rng.randint(1, vocab, (len(lengths), t)).astype(np.int32)
    mask = (np.arange(t)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return jnp.asarray(ids * mask), jnp.asarray(mask)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _classify_jit(graphdef, state, ids, mask, schedule):
    model = nnx.merge(graphdef, state)
    out = acc_classify(model, ids, mask, None, schedule)
    return out.logits, out.positions, out.attention_mask


@pytest.mark.parametrize("variant", VARIANTS)
def test_bert_rate_one_is_the_unpruned_model(rng, variant):
    model = _bert()
    ids, mask = _batch(rng, [16, 9, 3, 1], 16)
    schedule = KeepSchedule.from_speed(1.0, 3, AccConfig.tiny(variant=variant))
    out = acc_classify(model, ids, mask, None, schedule)
    np.testing.assert_array_equal(out.logits, model(ids, mask).logits)
    np.testing.assert_array_equal(out.positions, np.broadcast_to(np.arange(16), (4, 16)))


@pytest.mark.parametrize("variant", VARIANTS_LIGHT)
def test_bert_dropping_only_padding_changes_nothing(rng, variant):
    model = _bert()
    # Counts (16, 8, 4): every row has at most 4 real tokens, so only padding goes.
    ids, mask = _batch(rng, [4, 3, 1], 16)
    schedule = KeepSchedule.from_speed(0.5, 3, AccConfig.tiny(variant=variant))
    assert schedule.counts(16) == (16, 8, 4)
    out = acc_classify(model, ids, mask, None, schedule)
    assert_close(out.logits, model(ids, mask).logits)
    np.testing.assert_array_equal(out.attention_mask, mask[:, :4])


def _reference_classify(model, ids, mask, schedule):
    """One row at a time, selection in NumPy (argsort), no top_k, gather or vmap."""
    enc = model.encoder
    cfg = schedule.config
    logits, kept = [], []
    for r in range(ids.shape[0]):
        h = enc.embed(ids[r : r + 1])
        m = np.asarray(mask[r : r + 1])
        cols = np.arange(ids.shape[1])
        probs = values = None
        for i, n in enumerate(schedule.counts(ids.shape[1])):
            if n < h.shape[1]:
                p = np.asarray(probs[0], np.float64)  # [h t s]
                w = np.ones(p.shape[-1]) if values is None else None
                if values is None:
                    mass = np.einsum("hts,t->s", p, m[0]) * w
                else:
                    norms = np.linalg.norm(np.asarray(values[0], np.float64), axis=-1)  # [s h]
                    mass = np.einsum("hts,t,sh->s", p, m[0], norms)
                score = mass / (p.shape[0] * max(m[0].sum(), 1))
                pri = np.where(m[0] == 1, score, -np.inf)
                pri[: cfg.keep_first] = np.inf
                keep = np.sort(np.argsort(-pri, kind="stable")[:n])
                h, m, cols = h[:, keep], m[:, keep], cols[keep]
            att = enc.layers[i].attention
            values = att.values(h) if cfg.variant is AccVariant.VALUE_NORM else None
            out = enc.run_layers(h, jnp.asarray(m), i, i + 1, output_attentions=True)
            h, probs = out.last_hidden_state, out.attentions[0]
        logits.append(model.classify(h)[0])
        kept.append(cols)
    return np.stack(logits), np.stack(kept)


@pytest.mark.parametrize("variant", VARIANTS_LIGHT)
def test_bert_matches_per_example_reference(rng, variant):
    model = _bert()
    ids, mask = _batch(rng, [16, 12, 7, 2], 16)
    schedule = KeepSchedule.from_speed(0.6, 3, AccConfig.tiny(variant=variant))
    out = acc_classify(model, ids, mask, None, schedule)
    logits, kept = _reference_classify(model, ids, mask, schedule)
    np.testing.assert_array_equal(out.positions, kept)
    assert_close(out.logits, logits)


_BERT = _bert()
_BERT_SPLIT = nnx.split(_BERT)


@settings(max_examples=12, deadline=None)  # each example is a compiled pass
@given(
    lengths=st.lists(st.integers(1, 12), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
    rate=st.sampled_from([0.3, 0.6, 0.85]),
    variant=st.sampled_from(VARIANTS),
)
def test_bert_batch_invariance_and_order(lengths, seed, rate, variant):
    ids, mask = _batch(np.random.RandomState(seed), lengths, 12)
    schedule = KeepSchedule.from_speed(rate, 3, AccConfig.tiny(variant=variant))
    logits, positions, kept_mask = _classify_jit(*_BERT_SPLIT, ids, mask, schedule)
    positions = np.asarray(positions)
    for r, length in enumerate(lengths):
        row = positions[r]
        # Original order, [CLS] first, real tokens before any padding.
        assert row[0] == 0 and np.all(np.diff(row) > 0)
        n_real = int(np.asarray(kept_mask[r]).sum())
        assert n_real == min(length, len(row))
        assert np.all(row[:n_real] < length) and np.all(row[n_real:] >= length)
        # The same row alone gives the same tokens and logits.
        alone = _classify_jit(*_BERT_SPLIT, ids[r : r + 1], mask[r : r + 1], schedule)
        np.testing.assert_array_equal(alone[1][0], row)
        assert_close(alone[0][0], logits[r])


@pytest.mark.slow  # heavy; the default run keeps the suite under 12 minutes on 2 cores
def test_bert_pruned_forward_is_trainable(rng):
    model = _bert()
    ids, mask = _batch(rng, [10, 6], 12)
    schedule = KeepSchedule.from_speed(0.5, 3, AccConfig.tiny())
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        m = nnx.merge(graphdef, p, rest)
        out = acc_classify(m, ids, mask, None, schedule, rngs=nnx.Rngs(dropout=0))
        return jnp.mean(out.logits**2)

    grads = jax.grad(loss)(params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0


def test_schedule_must_match_the_model(rng):
    ids, mask = _batch(rng, [4], 8)
    with pytest.raises(ValueError, match="schedule is for 6 layers"):
        acc_classify(_bert(), ids, mask, None, KeepSchedule.from_speed(0.5, 6))
    with pytest.raises(ValueError, match="keep_first >= 1"):
        acc_classify(_bert(), ids, mask, None, KeepSchedule.from_speed(0.5, 3, AccConfig.t5()))


# ------------------------------------------------------------------------------------------
# GPT-2 prefill and generation


def _gpt2():
    return GPT2LMHeadModel(GPT2Config.tiny(n_layer=3), rngs=nnx.Rngs(1))


def _left_padded(rng, lengths, t, vocab=98):
    ids = rng.randint(1, vocab, (len(lengths), t)).astype(np.int32)
    mask = (np.arange(t)[None] >= t - np.asarray(lengths)[:, None]).astype(np.int32)
    return jnp.asarray(ids * mask), jnp.asarray(mask)


@pytest.mark.parametrize("variant", VARIANTS)
def test_gpt2_rate_one_is_the_unpruned_model(rng, variant):
    model = _gpt2()
    ids, mask = _left_padded(rng, [12, 7], 12)
    schedule = KeepSchedule.from_speed(1.0, 3, AccConfig.gpt2(variant=variant))
    prefill = acc_prefill(model, ids, mask, schedule, 5)
    position_ids = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0)
    assert_close(prefill.logits, model(ids, mask, jnp.asarray(position_ids)).logits[:, -1])
    np.testing.assert_array_equal(
        acc_generate(model, ids, mask, schedule, 6), model.generate(ids, mask, 6)
    )


@pytest.mark.slow  # sibling by default: test_gpt2_rate_one_is_the_unpruned_model
def test_gpt2_dropping_only_padding_generates_the_same(rng):
    model = _gpt2()
    # Counts (12, 6, 3): rows of at most 3 real tokens lose only left padding.
    ids, mask = _left_padded(rng, [3, 2, 1], 12)
    schedule = KeepSchedule.from_speed(0.5, 3, AccConfig.gpt2())
    assert schedule.counts(12) == (12, 6, 3)
    np.testing.assert_array_equal(
        acc_generate(model, ids, mask, schedule, 6), model.generate(ids, mask, 6)
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_gpt2_generates_from_the_pruned_cache(rng, variant):
    model = _gpt2()
    ids, mask = _left_padded(rng, [12, 9, 5], 12)
    schedule = KeepSchedule.from_speed(0.5, 3, AccConfig.gpt2(variant=variant))
    prefill = acc_prefill(model, ids, mask, schedule, 4)
    assert prefill.cache.counts == (12, 6, 3)
    assert [c.key.shape[1] for c in prefill.cache.layers] == [16, 10, 7]
    # The last prompt column always survives, and so does the order.
    for positions, n in zip(prefill.cache.positions, prefill.cache.counts, strict=True):
        kept = np.asarray(positions[:, :n])
        assert np.all(kept[:, -1] == 11) and np.all(np.diff(kept, axis=1) > 0)
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, mask):
        return acc_generate(nnx.merge(graphdef, state), ids, mask, schedule, 4)

    tokens = np.asarray(run(state, ids, mask))
    assert tokens.shape == (3, 4) and tokens.min() >= 0 and tokens.max() < 99
    # The first token is the argmax of the pruned prefill.
    np.testing.assert_array_equal(tokens[:, 0], np.argmax(prefill.logits, -1))


# ------------------------------------------------------------------------------------------
# T5 encoder


@pytest.mark.parametrize("variant", VARIANTS)
def test_t5_rate_one_is_the_unpruned_encoder(rng, variant):
    model = T5ForConditionalGeneration(T5Config.tiny(), rngs=nnx.Rngs(2))
    ids, mask = _batch(rng, [10, 4], 10)
    schedule = KeepSchedule.from_speed(1.0, 2, AccConfig.t5(variant=variant))
    out = acc_t5_encode(model, ids, mask, schedule)
    np.testing.assert_array_equal(out.last_hidden_state, model.encode(ids, mask).last_hidden_state)


def test_t5_padding_only_and_pruned_generation(rng):
    model = T5ForConditionalGeneration(T5Config.tiny(), rngs=nnx.Rngs(2))
    ids, mask = _batch(rng, [5, 3], 10)
    schedule = KeepSchedule.from_speed(0.5, 2, AccConfig.t5())
    assert schedule.counts(10) == (10, 5)
    out = acc_t5_encode(model, ids, mask, schedule)
    # Rows of at most 5 real tokens keep them all: the decoder sees the same keys.
    full = model.encode(ids, mask)
    keep = np.asarray(out.attention_mask)[..., None]
    assert_close(out.last_hidden_state * keep, full.last_hidden_state[:, :5] * keep)
    np.testing.assert_array_equal(
        t5_greedy_from_encoder(model, out.last_hidden_state, out.attention_mask, max_new_tokens=5),
        model.generate(ids, mask, max_new_tokens=5),
    )
    longer, long_mask = _batch(rng, [10, 8], 10)
    pruned = acc_t5_encode(
        model, longer, long_mask, KeepSchedule.from_speed(0.3, 2, AccConfig.t5())
    )
    assert pruned.last_hidden_state.shape == (2, 3, 32)
    tokens = t5_greedy_from_encoder(
        model, pruned.last_hidden_state, pruned.attention_mask, max_new_tokens=4
    )
    assert tokens.shape == (2, 4)


def test_acc_train_step_updates_parameters(rng):
    import optax

    from elang_jax.pruning import make_acc_train_step

    # No dropout: the loss on a fixed batch must then fall under Adam.
    config = BertConfig.tiny(num_layers=3, hidden_dropout=0.0, attention_dropout=0.0)
    model = BertForSequenceClassification(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = optax.adam(3e-3)
    step_fn = make_acc_train_step(graphdef, optimizer, jax.random.key(0))
    ids, mask = _batch(rng, [12, 5, 9, 2], 12)
    batch = dict(
        input_ids=ids,
        attention_mask=mask,
        token_type_ids=jnp.zeros_like(ids),
        labels=jnp.asarray([0, 1, 1, 0]),
        valid=jnp.asarray([True, True, True, False]),
    )
    schedule = KeepSchedule.from_speed(0.5, 3, AccConfig.tiny())
    opt_state = optimizer.init(params)
    losses = []
    for step in range(4):
        params, opt_state, metrics = step_fn(params, rest, opt_state, batch, step, schedule)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
