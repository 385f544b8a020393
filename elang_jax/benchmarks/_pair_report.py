"""The large pair's report (`evaluate_pair`'s result): the issue's goals per goal row and
the printed table, with the fine-tuning facts, the buckets and the PyTorch peers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from elang_jax.benchmarks._pair_composed import COMPOSED_ROW
from elang_jax.benchmarks._pair_config import PairEvalConfig

SUPER_ROW, SWIFT_ROW = "Super alone", "Swift alone"

# The issue's goals: row -> (largest dev accuracy drop below Super, least measured speed-up);
# every goal row also needs measured / FLOP speed-up of at least MIN_MEASURED_OVER_FLOP.
GOALS = {"E-LANG energy": (0.003, 3.0), COMPOSED_ROW: (0.005, 4.5)}
MIN_MEASURED_OVER_FLOP = 0.9


def goals(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's goals, per goal row present (`GOALS`): E-LANG energy at most 0.3 points
    below Super on dev with at least 3x measured, the composed pair at most 0.5 points
    below with at least 4.5x; measured/FLOP speed-up at least 0.9 for both."""
    by = {r["method"]: r for r in rows}
    out = {}
    for name, (max_drop, min_speedup) in GOALS.items():
        if name not in by:
            continue
        e = by[name]
        drop = by[SUPER_ROW]["accuracy"] - e["accuracy"]
        out[name] = dict(
            max_accuracy_drop=max_drop,
            accuracy_drop=drop,
            accuracy_drop_met=bool(drop <= max_drop + 1e-12),
            min_measured_speedup=min_speedup,
            measured_speedup=e["measured_speedup"],
            measured_speedup_met=bool(e["measured_speedup"] >= min_speedup),
            measured_over_flop=e["measured_over_flop"],
            measured_over_flop_met=bool(e["measured_over_flop"] >= MIN_MEASURED_OVER_FLOP),
        )
    return out


def format_pair(result: Mapping[str, Any]) -> str:
    """`evaluate_pair`'s result as a table, with the fine-tuning facts and the goals."""
    c: PairEvalConfig = result["args"]
    lines = []
    for role, f in result["finetune"].items():
        ft = c.spec(role).finetune
        acc, secs = f["dev_accuracy"], f["train_seconds"]
        examples = (f["steps"] or 0) * ft.batch_size
        timing = (
            ""
            if not secs
            else f", {secs / 60:.1f} min of training ({examples / secs:.1f} examples/s overall)"
        )
        how = (
            f"adopted from {f['adopted_from']}"
            if f["adopted_from"]
            else ("cached" if f["cached"] else "fine-tuned now")
        )
        lines.append(
            f"{role}: {f['model_type']} {f['num_layers']}x{f['hidden_size']}, {how}; "
            f"{f['steps']} steps of {ft.batch_size} (lr {ft.learning_rate:g}){timing}; "
            f"dev accuracy {'?' if acc is None else f'{100 * acc:.2f}'}"
        )
    w = max(len(r["method"]) for r in result["rows"])
    lines += [
        f"task {result['task']}, dev {result['dev_examples']} examples, calibration = "
        f"{result['calib_examples']} held-out train examples ({c.calibration.holdout_kind}), "
        f"target accuracy epsilon {c.calibration.epsilon}, batch {c.batch_size}, timing "
        f"{c.timing_rounds} rounds x {result['timing_batches']} batches, "
        f"device {result['device']}",
        f"{'method':<{w}} {'acc':>6} {'->Super':>8} {'FLOP x':>7} {'meas. x':>8} "
        f"{'meas/FLOP':>9} {'threshold':>10}",
    ]
    for r in result["rows"]:
        ratio = r.get("measured_over_flop")
        th = r.get("threshold")
        lines.append(
            f"{r['method']:<{w}} {100 * r['accuracy']:6.2f} {100 * r['to_super']:7.1f}% "
            f"{r['flop_speedup']:7.2f} {r['measured_speedup']:8.2f} "
            f"{'' if ratio is None else f'{ratio:9.2f}'}"
            f"{'' if th is None else f' {th:10.4f}'}"
        )
    for name, p in result.get("peers", {}).items():
        lines.append(
            f"{name}, routed as {p['routing_of']}: {p['pass_ms'] / 1e3:.2f} s a pass, ours "
            f"{p['ours_pass_ms'] / 1e3:.2f} s: ours {p['ours_speedup']:.2f}x faster "
            f"(predictions agree on {100 * p['prediction_agreement']:.1f}%)"
        )
    cascades = [r for r in result["rows"] if "buckets" in r]
    if cascades:
        how = "fitted to the calibration split's counts" if c.fit_cascade_buckets else "even"
        lines.append(f"Super rows run per batch of {c.batch_size} (buckets {how}):")
        lines += [
            f"  {r['method']}: {tuple(r['buckets'])}; FLOPs executed, padding rows of its "
            f"buckets included, {r['executed_flop_speedup']:.2f}x fewer than Super's"
            for r in cascades
        ]
    for c_ in (r for r in result["rows"] if r.get("kind") == "composed"):
        lines.append(
            f"{c_['method']}: Swift exits after layers {c_['swift_exits']} (mean "
            f"{c_['swift_layers_mean']:.2f} layers run), Super after {c_['super_exits']} "
            f"(mean {c_['super_layers_mean_escalated']:.2f} on escalated inputs), keep rate "
            f"{c_['acc_rate']:.3f}; FLOPs executed, padding rows of its buckets included, "
            f"{c_['executed_flop_speedup']:.2f}x fewer than Super's; calibration-split "
            f"predictions equal the offline replay on {100 * c_['calib_replay_agreement']:.1f}%"
        )
        if "exit_buckets" in c_:
            how = "fitted to the calibration split" if c_["buckets_fitted"] else "as configured"
            lines.append(
                f"  exit buckets of {c.batch_size} rows ({how}): "
                + ", ".join(f"{r} {tuple(s)}" for r, s in c_["exit_buckets"].items())
                + f"; executed FLOP speed-up on the calibration split "
                f"{c_['calib_executed_flop_speedup_even']:.2f}x with the buckets calibration "
                f"chose with, {c_['calib_executed_flop_speedup']:.2f}x with these"
            )

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for name, g in result["goals"].items():
        lines.append(
            f"goals ({name}): accuracy drop {100 * g['accuracy_drop']:.2f} points "
            f"(<= {100 * g['max_accuracy_drop']:.1f}: {met(g['accuracy_drop_met'])}); measured "
            f"{g['measured_speedup']:.2f}x (>= {g['min_measured_speedup']:.1f}x: "
            f"{met(g['measured_speedup_met'])}); measured/FLOP {g['measured_over_flop']:.2f} "
            f"(>= {MIN_MEASURED_OVER_FLOP}: {met(g['measured_over_flop_met'])})"
        )
    return "\n".join(lines)
