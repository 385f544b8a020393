"""Composed systems: each method alone reduces to its own implementation, all four together
keep every example independent of its batch, the offline replay matches the compiled step,
and bad configurations fail with clear messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flax import nnx

from elang_jax import data
from elang_jax.calibration import CalibrationTarget, calibrate, clopper_pearson_upper
from elang_jax.cascade import TierConfig
from elang_jax.compose import (
    CandidateGrid,
    ComposedClassifier,
    ComposedConfig,
    ComposedTierConfig,
    ExecutedCost,
    calibrate_composed,
    candidate_grid,
    executed_flops,
    fit_composed_buckets,
    pareto_front,
    replay_exit_index,
    tier_outcomes,
)
from elang_jax.core import bucket_sizes
from elang_jax.exits import MultiExit, MultiExitConfig
from elang_jax.models import BertConfig, BertForSequenceClassification
from elang_jax.moe import MoEConfig, MoEFeedForward, MoEImpl, RouterKind, ffn_sites
from elang_jax.pruning import AccConfig, KeepSchedule, acc_classify
from elang_jax.testing import assert_close

B, T, POOL = 8, 12, 40


def _classifier(layers: int, seed: int) -> BertForSequenceClassification:
    cfg = BertConfig.tiny(num_layers=layers, num_labels=3, hidden_dropout=0.0, intermediate_size=48)
    return BertForSequenceClassification(cfg, rngs=nnx.Rngs(seed))


def _multi_exit(model, seed: int) -> MultiExit:
    return MultiExit(model, MultiExitConfig.tiny(pooling="mean"), rngs=nnx.Rngs(seed))


def _moefied(model) -> BertForSequenceClassification:
    model = nnx.clone(model)
    config = MoEConfig.tiny(impl=MoEImpl.CAPACITY, router=RouterKind.CENTROID)
    for site in ffn_sites(model):
        site.ffn = MoEFeedForward.from_dense(site.ffn, config, rngs=nnx.Rngs(0))
    return model


@pytest.fixture(scope="module")
def pool():
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 99, size=(POOL, T)).astype(np.int32)
    mask = np.ones_like(ids)
    for i, n in enumerate(rng.randint(3, T + 1, size=POOL)):
        mask[i, n:] = 0
        ids[i, n:] = 0
    labels = rng.randint(0, 3, size=POOL).astype(np.int32)
    return ids, mask, labels


@pytest.fixture(scope="module")
def full_system():
    """Every method at once: an E-LANG router whose Swift model exits early, in front of a
    MoEfied, token-pruned Super model that exits early."""
    swift = _multi_exit(_classifier(2, 1), 2)
    super_ = _multi_exit(_moefied(_classifier(4, 3)), 4)
    config = ComposedConfig.elang_full(
        threshold=-0.9,
        swift_exit_threshold=-0.9,
        super_exit_threshold=-0.95,
        acc_rate=0.6,
        moe=MoEConfig.tiny(top_k=2, impl=MoEImpl.CAPACITY),
        cascade_bucket_fractions=(0.0, 0.25, 0.5, 1.0),
        exit_buckets=(0.0, 0.5, 1.0),
    )
    return ComposedClassifier([swift, super_], config)


@pytest.fixture(scope="module")
def per_segment(full_system):
    """The same system, its Super packing each segment on its own (exit buckets of 8 rows:
    0, 4, 8) instead of inside a cascade bucket."""
    config = full_system.config.replace(packing="per_segment")
    return ComposedClassifier(full_system.modules, config)


def _inputs(ids, mask):
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))


def _batches(pool) -> list[data.Batch]:
    ids, mask, labels = pool
    lengths = mask.sum(-1).astype(np.int32)
    encoded = data.Encoded(
        input_ids=[ids[i, :n] for i, n in enumerate(lengths)],
        token_type_ids=[np.zeros(n, np.int32) for n in lengths],
        lengths=lengths,
        labels=labels,
        max_length=T,
    )
    return list(data.iterate_batches(encoded, B, data.LengthBuckets((T,)), shuffle=False))


def _batch(pool, rows):
    ids, mask, _ = pool
    return _inputs(ids[rows], mask[rows])


# ---------------------------------------------------------------------------- reductions
def test_plain_tier_is_the_model(pool):
    model = _classifier(3, 0)
    system = ComposedClassifier([model], ComposedConfig(tiers=(ComposedTierConfig.make(name="m"),)))
    inputs = _batch(pool, np.arange(B))
    out = system.serving_step(B)(inputs)
    want = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]).logits
    assert_close(out.logits, want)
    assert (np.asarray(out.layers)[:, 0] == 3).all()
    assert (np.asarray(out.exit_index)[:, 0] == 0).all()


def test_pruned_tier_is_acc_classify(pool):
    model = _classifier(3, 0)
    tier = ComposedTierConfig.make(name="m", acc_rate=0.5)
    system = ComposedClassifier([model], ComposedConfig(tiers=(tier,)))
    inputs = _batch(pool, np.arange(B))
    out = system.serving_step(B)(inputs)
    schedule = KeepSchedule.from_speed(0.5, 3, AccConfig.bert())
    want = acc_classify(
        model, inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], schedule
    ).logits
    assert_close(out.logits, want)


# The degenerate thresholds are slow-only: -0.9 has examples leaving at every exit.
@pytest.mark.parametrize(
    "threshold",
    [
        pytest.param(math.inf, marks=pytest.mark.slow),
        -0.9,
        pytest.param(-math.inf, marks=pytest.mark.slow),
    ],
)
def test_exit_tier_without_pruning_is_the_exit_step(pool, threshold):
    me = _multi_exit(_classifier(3, 0), 1)
    tier = ComposedTierConfig.make(
        name="m",
        exit_policy="entropy",
        exit_threshold=threshold,
        exit_buckets=me.config.bucket_fractions,
    )
    system = ComposedClassifier([me], ComposedConfig(tiers=(tier,)))
    inputs = _batch(pool, np.arange(B))
    valid = np.arange(B) < B - 1
    out = system.serving_step(B)(inputs, valid=valid)
    want = me.exit_step(B)(inputs, valid=valid, threshold=threshold)
    np.testing.assert_array_equal(
        np.asarray(out.exit_index)[valid, 0], np.asarray(want.exit_index)[valid]
    )
    np.testing.assert_array_equal(np.asarray(out.layers)[:, 0], np.asarray(want.layers))
    assert_close(np.asarray(out.logits)[valid], np.asarray(want.logits)[valid])


@pytest.mark.slow  # test_offline_replay_matches_the_step checks exits under ACC by default
def test_pruned_exits_match_the_all_exit_pass(pool):
    """With +inf every example leaves at the last exit; with -inf at the first: the step's
    logits are then the offline pass's last and first exits."""
    me = _multi_exit(_classifier(3, 0), 1)
    system = ComposedClassifier([me], ComposedConfig.exits_acc(math.inf, 0.5))
    inputs = _batch(pool, np.arange(B))
    every = np.asarray(system.exit_logits(0, inputs))
    step = system.serving_step(B)
    assert_close(step(inputs).logits, every[-1])
    early = step(inputs, exit_thresholds=[-math.inf])
    assert_close(early.logits, every[0])
    assert (np.asarray(early.layers)[:, 0] == me.exit_layers[0]).all()
    # The pruned last exit is ACC's pruned model.
    schedule = KeepSchedule.from_speed(0.5, 3, AccConfig.bert())
    want = acc_classify(
        me.model, inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"], schedule
    ).logits
    assert_close(every[-1], want)


# ---------------------------------------------------------------------------- all four
def test_every_method_runs_and_escalates(full_system, pool):
    out = full_system.serving_step(B)(_batch(pool, np.arange(B)))
    tier = np.asarray(out.tier)
    layers = np.asarray(out.layers)
    assert set(np.unique(tier)) <= {0, 1}
    # Escalated examples ran Swift and Super; the others Swift only.
    assert (layers[tier == 0, 1] == 0).all() and (layers[tier == 1, 1] > 0).all()
    assert np.isnan(np.asarray(out.scores)[tier == 0, 1]).all()
    assert full_system.config.label == "swift[exits] -> super[moe+acc+exits]"


@pytest.mark.parametrize("packing", ["nested", "per_segment"])
def test_batch_invariance_of_the_composed_step(full_system, per_segment, pool, packing):
    """An example's answer, tier, exits and logits do not depend on its batch neighbours."""
    step = (full_system if packing == "nested" else per_segment).serving_step(B)
    rng = np.random.RandomState(1)
    first = np.arange(B)
    base = step(_batch(pool, first))
    for _ in range(3):
        rows = rng.choice(POOL, size=B, replace=False)
        rows[rng.randint(B)] = 0  # example 0 somewhere among other neighbours
        out = step(_batch(pool, rows))
        j = int(np.flatnonzero(rows == 0)[0])
        assert int(out.tier[j]) == int(base.tier[0])
        np.testing.assert_array_equal(np.asarray(out.exit_index)[j], np.asarray(base.exit_index)[0])
        np.testing.assert_array_equal(np.asarray(out.layers)[j], np.asarray(base.layers)[0])
        assert_close(np.asarray(out.logits)[j], np.asarray(base.logits)[0])


def test_alone_equals_in_a_batch(full_system, pool):
    """Example 3 alone (the other rows marked padding) gets what it gets in a full batch."""
    step = full_system.serving_step(B)
    rows = np.arange(B)
    full = step(_batch(pool, rows))
    alone = step(_batch(pool, rows), valid=rows == 3)
    assert int(alone.tier[3]) == int(full.tier[3])
    assert_close(np.asarray(alone.logits)[3], np.asarray(full.logits)[3])
    assert (np.asarray(alone.layers)[rows != 3] == 0).all()


@pytest.mark.slow  # a second compilation of the full system; test_eval_pair covers the path
def test_per_tier_inputs(full_system, pool):
    """Tiers with their own tokenizers get one inputs dict each, of their own length, and
    the FLOP model counts each tier at its own length."""
    step = full_system.serving_step(B)
    rows = np.arange(B)
    shared = _batch(pool, rows)
    out = step(shared)
    # Super's inputs padded to 4 more tokens: Swift's decisions are unchanged, and on these
    # inputs Super's answers too (masked padding; ACC keeps counts of the padded length).
    ids, mask = shared["input_ids"], shared["attention_mask"]
    longer = _inputs(np.pad(ids, ((0, 0), (0, 4))), np.pad(mask, ((0, 0), (0, 4))))
    own = step([shared, longer])
    np.testing.assert_array_equal(np.asarray(own.tier), np.asarray(out.tier))
    np.testing.assert_array_equal(np.asarray(own.predictions), np.asarray(out.predictions))
    flops = full_system.example_flops(own, [T, T + 4])
    up = np.asarray(own.tier) == 1
    assert (flops[up] > full_system.example_flops(out, T)[up]).all()
    np.testing.assert_array_equal(flops[~up], full_system.example_flops(out, T)[~up])
    with pytest.raises(ValueError, match="need inputs for 2 tiers, got 3"):
        step([shared] * 3)
    with pytest.raises(ValueError, match="one length per tier"):
        full_system.example_flops(out, [T])


def test_per_segment_packing_changes_only_the_buckets(full_system, per_segment, pool):
    """Packing Super's segments on their own gives every example the same answer, exits and
    logits as the nested step; only the rows run differ, as `ExecutedCost` replays them."""
    nested, flat = full_system.serving_step(B), per_segment.serving_step(B)
    sizes = np.array([0, 4, 8])  # Super's exit buckets of the whole batch
    for b in _batches(pool)[:3]:
        inputs = _inputs(b.input_ids, b.attention_mask)
        want, got = nested(inputs, b.valid), flat(inputs, b.valid)
        for field in ("predictions", "tier", "exit_index", "layers"):
            np.testing.assert_array_equal(
                np.asarray(getattr(got, field)), np.asarray(getattr(want, field))
            )
        assert_close(np.asarray(got.logits), np.asarray(want.logits))
        v = np.flatnonzero(b.valid)
        exit_index = np.asarray(got.exit_index)[v]
        ran_super = exit_index[:, 1] >= 0
        # Super's first segment ran on the exit bucket holding the escalated rows.
        first = sizes[np.searchsorted(sizes, ran_super.sum())]
        assert np.asarray(got.buckets_used)[0, 1] == first
        one = ExecutedCost(per_segment, np.zeros(len(v), int), [np.array([T])] * 2, B)
        np.testing.assert_array_equal(one.tier_rows(1, ran_super), [B])
    assert per_segment.config.packs_own(1) and not per_segment.config.packs_own(0)
    with pytest.raises(ValueError, match="pack their own rows"):
        per_segment.serving_step(B, rebalance=True)


def test_offline_replay_matches_the_step(full_system, pool):
    batches = _batches(pool)
    outcomes = [tier_outcomes(full_system, k, batches, POOL) for k in range(2)]
    grid = candidate_grid(full_system, outcomes, num=4)
    assert len(grid.configs) == len(grid.flops) == grid.predictions.shape[0]
    rng = np.random.RandomState(0)
    for i in rng.choice(len(grid.configs), size=4, replace=False):
        config = grid.configs[i]
        step = full_system.serving_step(B)
        th = [t.threshold for t in config.tiers[:-1]]
        eth = [t.exit_threshold for t in config.tiers]
        preds, cost, executed = np.zeros(POOL, int), 0.0, 0.0
        exits = np.zeros((POOL, 2), int)
        for b in batches:
            out = step(_inputs(b.input_ids, b.attention_mask), b.valid, th, eth)
            preds[b.index[b.valid]] = np.asarray(out.predictions)[b.valid]
            cost += full_system.example_flops(out, T)[b.valid].sum()
            # The executed cost of this batch alone, replayed from the step's own exits;
            # its cascade bucket must be the one the step ran.
            v = np.flatnonzero(b.valid)
            one = ExecutedCost(full_system, np.zeros(len(v), int), [np.array([T])] * 2, B)
            exit_index = np.asarray(out.exit_index)[v]
            exits[b.index[v]] = exit_index
            ran_super = exit_index[:, 1] >= 0
            assert one.cascade_rows(ran_super)[0] == np.asarray(out.buckets_used)[0, 1]
            executed += one.total(exit_index).sum()
        np.testing.assert_array_equal(preds, grid.predictions[i])
        np.testing.assert_array_equal(exits, replay_exit_index(full_system, outcomes, config))
        assert cost == pytest.approx(grid.flops[i])
        assert grid.executed is not None
        assert executed == pytest.approx(grid.executed[i])
    # Buckets round the rows up, never down.
    assert grid.executed is not None and np.all(grid.executed >= grid.flops * (1 - 1e-12))


def test_fitted_buckets_change_only_the_rows(full_system, per_segment, pool):
    """Buckets fitted to the calibration batches' counts: as many branches, the same answers
    and exits, fewer rows executed on those batches. Nested in a cascade bucket, Super's
    exit buckets (fractions of a bucket whose size varies) stay and the cascade's are fitted."""
    batches = _batches(pool)
    outcomes = [tier_outcomes(full_system, k, batches, POOL) for k in range(2)]
    grid = candidate_grid(full_system, outcomes, num=4)
    assert grid.executed is not None
    # A candidate that escalates some rows and lets some exit (the grid's median cost).
    nested = grid.configs[int(np.argsort(grid.executed)[len(grid.flops) // 2])]
    flat = nested.replace(packing="per_segment")
    config = fit_composed_buckets(per_segment, outcomes, flat)
    for got, was in zip(config.tiers, flat.tiers, strict=True):
        assert got.replace(exits=was.exits) == was  # nothing but the buckets changed
        sizes = bucket_sizes(B, got.exit_buckets)
        assert sizes[0] == 0 and sizes[-1] == B
        assert len(set(sizes) - {0}) <= len(set(bucket_sizes(B, was.exit_buckets)) - {0})
    assert config.tiers != flat.tiers
    assert config.cascade_bucket_fractions == flat.cascade_bucket_fractions
    fitted = ComposedClassifier(per_segment.modules, config)
    modules = per_segment.modules
    assert executed_flops(fitted, outcomes) < executed_flops(
        ComposedClassifier(modules, flat), outcomes
    )
    want_step, got_step = per_segment.serving_step(B), fitted.serving_step(B)
    th = [t.threshold for t in flat.tiers[:-1]]
    eth = [t.exit_threshold for t in flat.tiers]
    exits = np.zeros((POOL, 2), int)
    for b in batches:
        inputs = _inputs(b.input_ids, b.attention_mask)
        want, got = want_step(inputs, b.valid, th, eth), got_step(inputs, b.valid)
        for field in ("predictions", "tier", "exit_index"):
            np.testing.assert_array_equal(
                np.asarray(getattr(got, field)), np.asarray(getattr(want, field))
            )
        exits[b.index[b.valid]] = np.asarray(got.exit_index)[b.valid]
    np.testing.assert_array_equal(exits, replay_exit_index(fitted, outcomes))
    assert (exits[:, 1] >= 0).any() and (exits[:, 1] == -1).any()
    refit = fit_composed_buckets(full_system, outcomes, nested)
    assert refit.tiers[1] == nested.tiers[1]
    assert refit.cascade_bucket_fractions != nested.cascade_bucket_fractions
    assert executed_flops(ComposedClassifier(modules, refit), outcomes) < executed_flops(
        ComposedClassifier(modules, nested), outcomes
    )
    with pytest.raises(ValueError, match="num_buckets must be >= 1"):
        fit_composed_buckets(full_system, outcomes, num_buckets=0)


def test_executed_cost_counts_bucket_rows(full_system):
    """Rows of every bucket, by hand: a batch of 8 rows (cascade buckets 0, 2, 4, 8; exit
    buckets of a tier's r rows 0, r/2, r) and a last batch of 3 examples."""
    exit_index = np.array(
        [[0, -1]] * 5
        + [[1, 0], [1, 3], [1, 3]]  # batch 0: three escalate
        + [[1, -1], [1, -1], [0, -1]]  # batch 1: none does
    )
    batch = np.array([0] * 8 + [1] * 3)
    replay = ExecutedCost(full_system, batch, [np.array([T, T])] * 2, B)

    def segments(k, layers):
        total = [full_system.tier_flops(k, T, n, e) for e, n in enumerate(layers)]
        return np.diff([0.0, *total])

    s = segments(0, (1, 2))
    u = segments(1, (1, 2, 3, 4))
    want = [
        # Swift: 8 rows, then 3 running in a bucket of 4; Super: 3 escalated in a cascade
        # bucket of 4, first all 3 (bucket 4), then 2 (bucket 2) for three segments.
        8 * s[0] + 4 * s[1] + 4 * u[0] + 2 * (u[1] + u[2] + u[3]),
        # 3 valid rows (bucket 4), 2 of them still running (bucket 4); Super skipped.
        4 * s[0] + 4 * s[1],
    ]
    np.testing.assert_allclose(replay.total(exit_index), want, rtol=1e-12)
    np.testing.assert_array_equal(replay.cascade_rows(exit_index[:, 1] >= 0), [4, 0])
    # Packed per segment, Super's exit buckets are of the whole batch (0, 4, 8): its first
    # segment runs 3 rows in 4, then 2 in 4.
    flat = ComposedClassifier(
        full_system.modules, full_system.config.replace(packing="per_segment")
    )
    per_segment = ExecutedCost(flat, batch, [np.array([T, T])] * 2, B)
    want[0] = 8 * s[0] + 4 * s[1] + 4 * u[0] + 4 * (u[1] + u[2] + u[3])
    np.testing.assert_allclose(per_segment.total(exit_index), want, rtol=1e-12)
    with pytest.raises(ValueError, match="more than rows=2"):
        ExecutedCost(full_system, batch, [np.array([T, T])] * 2, 2)


def test_calibration_meets_the_target(full_system, pool):
    labels = pool[2]
    batches = _batches(pool)
    outcomes = [tier_outcomes(full_system, k, batches, POOL) for k in range(2)]
    grid = candidate_grid(full_system, outcomes, num=4)
    reference = outcomes[1].logits[-1].argmax(-1) == labels
    ref_flops = 3.0 * float(grid.flops.max())
    chosen = calibrate_composed(
        [grid], labels, reference, ref_flops, CalibrationTarget(epsilon=0.0)
    )
    assert chosen.point.accuracy >= reference.mean() - 1e-12
    ok = (grid.predictions == labels).mean(-1) >= reference.mean() - 1e-12
    # Nothing meeting the target is cheaper: in executed FLOPs (the default), or in
    # analytic ones when asked.
    for cost, measure in (("executed", grid.executed), ("analytic", grid.flops)):
        assert measure is not None
        point = calibrate_composed(
            [grid], labels, reference, ref_flops, CalibrationTarget(epsilon=0.0), cost=cost
        ).point
        assert point.cost == pytest.approx(measure[point.index] / ref_flops)
        assert point.cost <= (measure[ok] / ref_flops).min() + 1e-12
    assert (
        chosen.point.index
        == calibrate_composed(
            [grid], labels, reference, ref_flops, CalibrationTarget(epsilon=0.0), cost="executed"
        ).point.index
    )


def test_pareto_front():
    loss = np.array([0.0, 0.3, 0.0, 0.0, 0.1, 0.1, 0.5])
    cost = np.array([1.0, 0.9, 0.8, 0.6, 0.5, 0.5, 0.5])
    # 0 and 2 lose to 3 (cheaper, as good), 1 to everything cheaper, 5 ties 4 (the first
    # kept), 6 to 4 at equal cost: most expensive first.
    np.testing.assert_array_equal(pareto_front(loss, cost), [3, 4])


def test_guarantee_tests_the_pareto_front_on_the_other_half():
    """Sorted by cost alone, a noisy candidate early in the sequence ends the test before
    the cheap good candidates behind it; on the Pareto front it is skipped, and the bound
    comes from the half of the examples that did not pick the front."""
    n, rng = 400, np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    # Candidates (cost): exact (1.0), 30% wrong (0.9), exact (0.8, 0.6), 20% wrong (0.3).
    wrong = [0.0, 0.3, 0.0, 0.0, 0.2]
    preds = np.stack([np.where(rng.random(n) < w, 1 - labels, labels) for w in wrong])
    cost = np.array([1.0, 0.9, 0.8, 0.6, 0.3])
    config = ComposedConfig(tiers=(ComposedTierConfig.make(name="a"),))
    grid = CandidateGrid(preds, cost, [config] * len(cost))
    with pytest.raises(ValueError, match="executed FLOPs"):
        calibrate_composed([grid], labels, np.ones(n, bool), 1.0, CalibrationTarget())
    reference = np.ones(n, bool)
    target = CalibrationTarget(objective="guarantee", epsilon=0.05, delta=0.1)
    by_cost = calibrate(preds == labels, cost, reference, target)
    assert by_cost.index == 0  # stopped at the noisy candidate
    chosen = calibrate_composed([grid], labels, reference, 1.0, target, seed=3, cost="analytic")
    assert chosen.point.index == 3 and chosen.point.cost == pytest.approx(0.6)
    half = np.random.default_rng(3).permutation(n)[n // 2 :]
    bound = clopper_pearson_upper(int((preds[3][half] != labels[half]).sum()), len(half), 0.1)
    assert chosen.point.upper_bound_drop == pytest.approx(bound)
    assert chosen.point.accuracy == 1.0 and chosen.point.reference_accuracy == 1.0
    # The accuracy target keeps pooling every candidate.
    loose = calibrate_composed(
        [grid], labels, reference, 1.0, CalibrationTarget(epsilon=0.3), cost="analytic"
    )
    assert loose.point.index == 4


# ---------------------------------------------------------------------------- bad input
def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="acc_rate"):
        ComposedTierConfig.make(name="a", acc_rate=1.5)
    with pytest.raises(ValueError, match="threshold is NaN"):
        ComposedTierConfig.make(name="a", threshold=float("nan"))
    with pytest.raises(ValueError, match="exit_policy"):
        ComposedTierConfig.make(name="a", exit_policy="sometimes")
    with pytest.raises(ValueError, match="top_k"):
        ComposedTierConfig.make(name="a", moe=MoEConfig(num_experts=4, top_k=0))
    with pytest.raises(ValueError, match="distinct"):
        ComposedConfig(tiers=(ComposedTierConfig.make(name="a"), ComposedTierConfig.make(name="a")))
    with pytest.raises(ValueError, match="at least one tier"):
        ComposedConfig(tiers=())
    with pytest.raises(ValueError, match="unknown packing 'sideways'"):
        ComposedConfig(tiers=(ComposedTierConfig.make(name="a"),), packing="sideways")


def test_modules_must_fit_the_config(pool):
    model = _classifier(2, 0)
    with pytest.raises(ValueError, match="must be a MultiExit"):
        ComposedClassifier([model], ComposedConfig.exits_acc(0.0, 0.5))
    with pytest.raises(ValueError, match="dense FFNs"):
        ComposedClassifier(
            [model],
            ComposedConfig(tiers=(ComposedTierConfig.make(name="m", moe=MoEConfig.tiny(top_k=2)),)),
        )
    moefied = _moefied(model)
    with pytest.raises(ValueError, match="moe.num_experts=8 but layer 0 has 4 experts"):
        ComposedClassifier(
            [moefied],
            ComposedConfig(
                tiers=(ComposedTierConfig.make("m", moe=MoEConfig(num_experts=8, top_k=2)),)
            ),
        )
    me = _multi_exit(model, 1)
    tier = ComposedTierConfig(
        route=TierConfig(name="m"), exits=MultiExitConfig(exit_layers=(2,), threshold=0.0)
    )
    with pytest.raises(ValueError, match=r"exits.exit_layers=\(2,\) but its MultiExit"):
        ComposedClassifier([me], ComposedConfig(tiers=(tier,)))
    with pytest.raises(ValueError, match="acc is set but acc_rate is None"):
        ComposedTierConfig.make("m", acc=AccConfig.bert())
    with pytest.raises(ValueError, match="2 tiers configured"):
        ComposedClassifier([model], ComposedConfig.tiny())
    system = ComposedClassifier([model], ComposedConfig(tiers=(ComposedTierConfig.make(name="m"),)))
    step = system.serving_step(B)
    with pytest.raises(ValueError, match="shape"):
        step(_batch(pool, np.arange(B - 1)))
    with pytest.raises(ValueError, match="exit_thresholds"):
        step(_batch(pool, np.arange(B)), exit_thresholds=[float("nan")])
    bad = _batch(pool, np.arange(B))
    bad["input_ids"] = bad["input_ids"].copy()
    bad["input_ids"][0, 0] = 10_000
    with pytest.raises(ValueError, match="vocab"):
        step(bad)
