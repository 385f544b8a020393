"""What every compiled step promises, checked the same way for each front end with chex:
output shapes and dtypes, finite logits, one compile for any number of threshold changes
(`chex.assert_max_traces` through `CompiledStep.limit_traces`), and the core primitives
giving the same answer with and without `jit` (`chex.variants`)."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elang_jax.cascade import Cascade, Tier, TierConfig
from elang_jax.compose import ComposedClassifier, ComposedConfig
from elang_jax.core import StackState, bucket_sizes, compact_apply, full_counts, run_stack
from elang_jax.exits import MultiExit, MultiExitConfig
from elang_jax.models import BertConfig, BertForSequenceClassification
from elang_jax.pruning import AccConfig, AccSelector, KeepSchedule

B, T, C = 8, 10, 3


def _classifier(layers: int, seed: int) -> BertForSequenceClassification:
    cfg = BertConfig.tiny(num_layers=layers, num_labels=C, hidden_dropout=0.0)
    return BertForSequenceClassification(cfg, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.RandomState(3)
    ids = rng.randint(1, 99, size=(B, T)).astype(np.int32)
    mask = np.ones_like(ids)
    for i, n in enumerate(rng.randint(3, T + 1, size=B)):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))


def _steps():
    """(name, compiled step, threshold keyword and values to sweep, tiers) per front end."""
    swift, sup = _classifier(1, 1), _classifier(2, 2)
    cascade = Cascade([Tier(swift, TierConfig(name="a")), Tier(sup, TierConfig(name="b"))])
    me = MultiExit(_classifier(4, 3), MultiExitConfig.tiny(), rngs=nnx.Rngs(4))
    composed = ComposedClassifier(
        [_classifier(1, 5), MultiExit(_classifier(4, 6), MultiExitConfig.tiny(), rngs=nnx.Rngs(7))],
        ComposedConfig.tiny(),
    )
    sweep = (-math.inf, -0.5, 0.0, math.inf)
    return [
        ("cascade", cascade.serving_step(B), lambda t: dict(thresholds=[t]), 2),
        ("exits", me.exit_step(B), lambda t: dict(threshold=t), None),
        (
            "composed",
            composed.serving_step(B),
            lambda t: dict(thresholds=[t], exit_thresholds=[t, t]),
            2,
        ),
    ], sweep


def test_every_step_keeps_its_output_contract_and_compiles_once(inputs):
    steps, sweep = _steps()
    for name, step, knob, tiers in steps:
        # chex counts traces per call site: each step gets a fresh count.
        chex.clear_trace_counter()
        step.limit_traces(1)
        for value in sweep:
            out = step(inputs, **knob(value))
            chex.assert_shape(out.predictions, (B,))
            chex.assert_type(out.predictions, jnp.int32)
            chex.assert_shape(out.logits, (B, C))
            chex.assert_tree_all_finite(out.logits)
            if tiers is not None:
                chex.assert_shape([out.tier], (B,))
                chex.assert_shape(out.scores, (B, tiers))
            else:
                chex.assert_shape([out.exit_index, out.layers, out.scores], (B,))
        assert step.traces == 1, name


class CorePrimitivesTest(chex.TestCase):
    """The core's primitives give the same answer under `jit` and eagerly."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_compact_apply(self):
        w = jax.random.normal(jax.random.key(0), (4, 3))
        x = jax.random.normal(jax.random.key(1), (B, 4))
        route = jnp.asarray([1, 0, 0, 1, 1, 0, 1, 0], bool)

        def fn(rows, valid):
            return jnp.tanh(rows @ w)

        run = self.variant(
            lambda r, x: compact_apply(fn, r, x, jnp.zeros((B, 3)), bucket_sizes(B))[0]
        )
        out = run(route, x)
        want = jnp.where(route[:, None], jnp.tanh(x @ w), 0.0)
        chex.assert_trees_all_close(out, want, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_run_stack_with_acc(self):
        model = _classifier(3, 8)
        enc = model.encoder
        ids = jax.random.randint(jax.random.key(2), (B, T), 1, 99)
        mask = jnp.ones((B, T), jnp.int32)
        schedule = KeepSchedule.from_speed(0.6, 3, AccConfig.bert())
        counts = schedule.counts(T)

        def run(ids, mask):
            state = StackState.start(enc.embed(ids), mask)
            return run_stack(enc.layer_fn(), state, 0, 3, counts, AccSelector(schedule))[0]

        out = self.variant(run)(ids, mask)
        chex.assert_shape(out.h, (B, counts[-1], enc.config.hidden_size))
        chex.assert_shape([out.mask, out.positions, out.scores], (B, counts[-1]))
        chex.assert_tree_all_finite(out.h)
        # Without a selector every token runs every layer: the plain stack.
        plain = self.variant(
            lambda ids, mask: (
                run_stack(
                    enc.layer_fn(), StackState.start(enc.embed(ids), mask), 0, 3, full_counts(3, T)
                )[0].h
            )
        )(ids, mask)
        chex.assert_trees_all_close(
            plain, enc.run_layers(enc.embed(ids), mask).last_hidden_state, atol=1e-5
        )
