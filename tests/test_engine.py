"""The step engine under every front end: a compiled step follows the models it was built
for (in-place weight updates, replaced modules, new temperatures), compiles once per
structure, checks its arguments in one place, and never changes the caller's modules."""

from __future__ import annotations

import logging
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elang_jax import engine
from elang_jax.cascade import Cascade, Tier, TierConfig
from elang_jax.cascade._seq2seq import ElangSeq2Seq, EnergyHead, Seq2SeqCascadeConfig
from elang_jax.compose import ComposedClassifier, ComposedConfig, ComposedTierConfig
from elang_jax.core import StackState, full_counts, run_stack
from elang_jax.engine import CompiledStep, per_tier, step_count, step_thresholds, step_valid
from elang_jax.exits import MultiExit, MultiExitConfig
from elang_jax.models import BertConfig, BertForSequenceClassification
from elang_jax.models._t5 import T5Config, T5ForConditionalGeneration
from elang_jax.moe import MoEConfig, MoEFeedForward, MoEImpl, RouterKind, ffn_sites
from elang_jax.testing import assert_close

B, T = 4, 10


def _classifier(layers: int, seed: int, labels: int = 3) -> BertForSequenceClassification:
    cfg = BertConfig.tiny(
        num_layers=layers, num_labels=labels, hidden_dropout=0.0, intermediate_size=48
    )
    return BertForSequenceClassification(cfg, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 99, size=(B, T)).astype(np.int32)
    mask = np.ones_like(ids)
    for i, n in enumerate((T, 7, 4, 9)):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))


def _plain_logits(model, batch):
    return np.asarray(model(batch["input_ids"], batch["attention_mask"]).logits)


def _scale_classifier(model: BertForSequenceClassification, factor: float) -> None:
    """An in-place weight update: same structure, new values."""
    model.head.out.kernel.value = model.head.out.kernel.value * factor


# ---------------------------------------------------------------------------------- Cascade


def test_cascade_follows_weights_and_replaced_models(batch):
    swift, sup = _classifier(1, 1), _classifier(2, 2)
    cascade = Cascade([Tier(swift, TierConfig(name="swift")), Tier(sup, TierConfig(name="super"))])
    step = cascade.serving_step(B).limit_traces(2)
    assert cascade.serving_step(B) is step and isinstance(step, CompiledStep)
    keep_all = [-math.inf]
    out = step(batch, thresholds=keep_all)
    assert_close(out.logits, _plain_logits(swift, batch))
    # In place: the same compiled program, the new weights.
    _scale_classifier(swift, -2.0)
    out = step(batch, thresholds=keep_all)
    assert_close(out.logits, _plain_logits(swift, batch))
    assert step.traces == 1
    # A replaced tier model of another depth: the step retraces and answers with it.
    cascade.tiers[0].model = _classifier(2, 7)
    out = step(batch, thresholds=keep_all)
    assert_close(out.logits, _plain_logits(cascade.tiers[0].model, batch))
    assert step.traces == 2
    # A new temperature is a new structure too: the energy scores change with it.
    before = np.asarray(step(batch, thresholds=keep_all).scores[:, 0])
    cascade.tiers[0].config = TierConfig(name="swift", temperature=3.0)
    with pytest.raises(AssertionError):  # limit_traces(2) pins the compile count
        step(batch, thresholds=keep_all)
    fresh = Cascade(cascade.tiers).serving_step(B)
    after = np.asarray(fresh(batch, thresholds=keep_all).scores[:, 0])
    assert not np.allclose(before, after)
    flops = fresh.example_flops(fresh(batch, thresholds=keep_all), T)
    chex.assert_shape(flops, (B,))


# ---------------------------------------------------------------------------------- exits


@pytest.mark.slow  # the cascade's test covers the mechanism; test_exits the exit step
def test_exit_step_follows_weights_heads_and_temperatures(batch):
    model = _classifier(4, 3)
    me = MultiExit(model, MultiExitConfig.tiny(), rngs=nnx.Rngs(4))
    step = me.exit_step(B)
    assert me.exit_step(B) is step
    never = dict(threshold=math.inf)
    out = step(batch, **never)
    assert_close(out.logits, _plain_logits(model, batch))
    _scale_classifier(model, 0.5)
    out = step(batch, **never)
    assert_close(out.logits, _plain_logits(model, batch))
    # Temperatures are state: they change the scores without a recompile.
    always = dict(threshold=-math.inf)
    s1 = np.asarray(step(batch, **always).scores)
    me.set_temperatures([4.0] * me.num_exits)
    s2 = np.asarray(step(batch, **always).scores)
    assert not np.allclose(s1, s2) and step.traces == 1
    # A replaced final head (another structure) is used, not the one the step first saw.
    model.head.out = nnx.Linear(model.config.hidden_size, 3, use_bias=False, rngs=nnx.Rngs(9))
    out = step(batch, **never)
    assert_close(out.logits, _plain_logits(model, batch))
    assert step.traces == 2
    with pytest.raises(ValueError, match="patience must be an integer"):
        step(batch, patience=1.7)


# ---------------------------------------------------------------------------------- compose


def test_composed_step_follows_weights_and_leaves_modules_alone(batch):
    model = _classifier(2, 5)
    moe = nnx.clone(model)
    config = MoEConfig.tiny(impl=MoEImpl.CAPACITY, router=RouterKind.CENTROID)
    for site in ffn_sites(moe):
        site.ffn = MoEFeedForward.from_dense(site.ffn, config, rngs=nnx.Rngs(0))
    top_k = [site.ffn.config.top_k for site in ffn_sites(moe)]
    system = ComposedClassifier(
        [moe],
        ComposedConfig(tiers=(ComposedTierConfig.make(name="moe", moe=config.replace(top_k=1)),)),
    )
    step = system.serving_step(B)
    out = step(batch)
    assert [site.ffn.config.top_k for site in ffn_sites(moe)] == top_k  # not changed
    # The step ran one expert per token: the model as given (its own top_k) differs.
    assert top_k[0] != 1
    one = nnx.clone(moe)
    for site in ffn_sites(one):
        site.ffn.config = site.ffn.config.replace(top_k=1)
    assert_close(out.logits, _plain_logits(one, batch))
    _scale_classifier(moe, 3.0)
    _scale_classifier(one, 3.0)
    assert_close(step(batch).logits, _plain_logits(one, batch))
    assert step.traces == 1


# ---------------------------------------------------------------------------------- seq2seq


@pytest.mark.slow  # same engine mechanism as the cascade's test above
def test_seq2seq_step_follows_weights_and_replaced_models():
    swift = T5ForConditionalGeneration(
        T5Config.tiny_v1_1(num_layers=1, num_decoder_layers=1), rngs=nnx.Rngs(1)
    )
    sup = T5ForConditionalGeneration(
        T5Config.tiny_v1_1(num_layers=1, num_decoder_layers=2), rngs=nnx.Rngs(2)
    )
    head = EnergyHead(swift.config.d_model, hidden=8, rngs=nnx.Rngs(3))
    cfg = Seq2SeqCascadeConfig(max_new_tokens=4, bucket_fractions=(0.0, 1.0))
    cascade = ElangSeq2Seq(swift, sup, head, cfg)
    rng = np.random.RandomState(1)
    ids = rng.randint(2, 99, size=(B, 6)).astype(np.int32)
    inputs = dict(input_ids=ids, attention_mask=np.ones_like(ids))
    step = cascade.serving_step(B)
    escalate = dict(threshold=math.inf)
    np.testing.assert_array_equal(step(inputs, **escalate).tokens, sup.generate(ids, None, 4))
    sup.lm_head.kernel.value = -sup.lm_head.kernel.value
    np.testing.assert_array_equal(step(inputs, **escalate).tokens, sup.generate(ids, None, 4))
    assert step.traces == 1
    other = T5ForConditionalGeneration(
        T5Config.tiny_v1_1(num_layers=2, num_decoder_layers=1), rngs=nnx.Rngs(5)
    )
    cascade.super_model = other
    np.testing.assert_array_equal(step(inputs, **escalate).tokens, other.generate(ids, None, 4))
    assert step.traces == 2


# ---------------------------------------------------------------------------------- inputs


def test_one_normaliser_for_every_step(batch):
    swift, sup = _classifier(1, 1), _classifier(1, 2)
    cascade = Cascade([Tier(swift, TierConfig(name="swift")), Tier(sup, TierConfig(name="super"))])
    me = MultiExit(_classifier(2, 3), MultiExitConfig.tiny(), rngs=nnx.Rngs(4))
    system = ComposedClassifier([swift], ComposedConfig(tiers=(ComposedTierConfig.make(name="a"),)))
    steps = [cascade.serving_step(B), me.exit_step(B), system.serving_step(B)]
    no_mask = dict(input_ids=batch["input_ids"])
    ones = dict(input_ids=batch["input_ids"], attention_mask=np.ones((B, T), np.int32))
    for step in steps:
        # A missing attention_mask means all ones, in every step.
        assert_close(step(no_mask).logits, step(ones).logits)
        for bad in (np.ones(1, bool), np.ones(3, bool)):
            with pytest.raises(ValueError, match="valid must have shape"):
                step(batch, valid=bad)
        half = dict(batch, attention_mask=batch["attention_mask"] * 0.5)
        with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
            step(half)
        with pytest.raises(ValueError, match="input_ids"):
            step(dict(attention_mask=batch["attention_mask"]))
    # The plain forward refuses the same mask: one answer, never two.
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        swift(batch["input_ids"], batch["attention_mask"] * 0.5)


def test_argument_helpers():
    np.testing.assert_array_equal(step_valid(None, 3), [True] * 3)
    np.testing.assert_array_equal(step_valid(np.array([1, 0, 1]), 3), [True, False, True])
    with pytest.raises(ValueError, match="valid must hold booleans"):
        step_valid(np.array([0.5, 1, 1]), 3)
    np.testing.assert_array_equal(step_thresholds("t", None, [1.0, 2.0], 2), [1.0, 2.0])
    with pytest.raises(ValueError, match="2 non-NaN floats"):
        step_thresholds("t", [1.0], [1.0, 2.0], 2)
    assert step_count("patience", np.int64(3), 2) == 3
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="integer >= 1"):
            step_count("patience", bad, 2)
    shared, own = {"input_ids": np.ones((2, 3))}, {"input_ids": np.ones((2, 5))}
    assert per_tier(shared, 2) == [shared, shared]
    assert per_tier([shared, own], 2) == [shared, own]
    with pytest.raises(ValueError, match="need inputs for 2 tiers, got 1"):
        per_tier([shared], 2)
    with pytest.raises(TypeError):  # the runtime type checker's, or per_tier's own
        per_tier(np.ones((2, 3)), 2)


# ---------------------------------------------------------------------------------- runner


def test_run_stack_without_selection_is_run_layers(batch):
    model = _classifier(3, 6)
    enc = model.encoder
    h = enc.embed(jnp.asarray(batch["input_ids"]))
    mask = jnp.asarray(batch["attention_mask"])
    seen = []

    def record(i, state, extra):
        seen.append(i)
        return extra + 1

    state, calls = run_stack(
        enc.layer_fn(),
        StackState.start(h, mask),
        1,
        3,
        full_counts(3, T),
        after_layer=record,
        extra=0,
    )
    assert seen == [1, 2] and calls == 2
    want = enc.run_layers(h, mask, 1, 3).last_hidden_state
    assert_close(state.h, want)
    chex.assert_shape([state.mask, state.positions, state.scores], (B, T))
    with pytest.raises(ValueError, match="no selector"):
        run_stack(enc.layer_fn(), StackState.start(h, mask), 0, 1, (T - 1,))
    jax.block_until_ready(state.h)


@pytest.mark.skipif(engine.memory_maps() is None, reason="reads Linux's /proc")
def test_memory_maps_headroom_is_logged_and_warned(caplog):
    maps = engine.memory_maps()
    assert maps is not None
    held, limit = maps
    assert 0 < held < limit
    with caplog.at_level(logging.INFO, logger="elang_jax.engine._maps"):
        assert engine.check_memory_maps("quiet") is not None
        engine.check_memory_maps("loaded", warn_at=0.0)
    quiet, loaded = caplog.records
    assert quiet.levelno == logging.INFO and "memory maps" in quiet.getMessage()
    assert loaded.levelno == logging.WARNING and "vm.max_map_count" in loaded.getMessage()
