"""The demo's results: one row per method, printed as a table and written as JSON, CSV and a
plot of accuracy against measured speed-up."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elang_jax import jsonio
from elang_jax.core import bucket_sizes

SKIP_UNITS = ("inputs", "layers", "tokens", "experts")
REFERENCE_METHODS = ("Super", "Swift")

# What "skipped" means per unit, for the table's footnote.
SKIP_LEGEND = {
    "inputs": "inputs that never reached Super / its last layer",
    "layers": "layer computations skipped",
    "tokens": "token-layer slots dropped (of the padded length, in the layers run)",
    "experts": "FFN experts not run per token",
}


def make_row(
    method: str,
    kind: str,
    accuracy: float,
    flop_speedup: float,
    measured_speedup: float,
    skipped: dict[str, float],
    **extra: Any,
) -> dict[str, Any]:
    """One result row; `extra` holds anything else worth keeping (F1, calibration, ...)."""
    for name, value in (("accuracy", accuracy), ("flop_speedup", flop_speedup)):
        if not math.isfinite(value):
            raise ValueError(f"{method}: {name} is {value}")
    unknown = set(skipped) - set(SKIP_UNITS)
    if unknown:
        raise ValueError(f"{method}: unknown skipped units {sorted(unknown)}; use {SKIP_UNITS}")
    return dict(
        method=method,
        kind=kind,
        accuracy=float(accuracy),
        flop_speedup=float(flop_speedup),
        measured_speedup=float(measured_speedup),
        skipped={k: float(v) for k, v in skipped.items()},
        **extra,
    )


def _skipped_text(skipped: dict[str, float]) -> str:
    return ", ".join(f"{100 * v:.0f}% {k}" for k, v in skipped.items()) or "-"


def format_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """The rows as a plain-text table (accuracy in %, speed-ups vs Super)."""
    with_f1 = any("f1" in r for r in rows)
    header = ["method", "accuracy"] + (["F1"] if with_f1 else [])
    header += ["FLOP x", "measured x", "skipped", "calib. acc (Super)"]
    lines = []
    for r in rows:
        cal = r.get("calibration") or {}
        cal_text = (
            f"{100 * cal['accuracy']:.2f} ({100 * cal['reference_accuracy']:.2f})"
            + ("" if cal.get("target_met", True) else " missed")
            if cal
            else ""
        )
        cells = [r["method"], f"{100 * r['accuracy']:.2f}"]
        if with_f1:
            cells.append(f"{100 * r['f1']:.2f}" if "f1" in r else "")
        cells += [
            f"{r['flop_speedup']:.2f}",
            f"{r['measured_speedup']:.2f}",
            _skipped_text(r["skipped"]),
            cal_text,
        ]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(
            c.ljust(w) if i in (0, len(cells) - 2) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [title] if title else []
    out += [fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(c) for c in lines]
    units = sorted({k for r in rows for k in r["skipped"]}, key=SKIP_UNITS.index)
    if units:
        out.append("skipped: " + "; ".join(f"{k} = {SKIP_LEGEND[k]}" for k in units))
    return "\n".join(out)


def format_buckets(methods: Sequence[Any], batch_size: int) -> str:
    """Each row's compaction buckets (from `Method.calibration["bucket_fractions"]`) as the
    row counts its step compiles for a batch of `batch_size`; "" when no row packs."""
    lines = [
        f"  {m.name}: {tuple(bucket_sizes(batch_size, m.calibration['bucket_fractions']))}"
        for m in methods
        if "bucket_fractions" in m.calibration
    ]
    if not lines:
        return ""
    return f"rows run per batch of {batch_size} (compaction buckets):\n" + "\n".join(lines)


def write_json(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """`results.json`: the list of rows (strict JSON by `elang_jax.jsonio`: an infinite
    threshold is "inf")."""
    return jsonio.write_json(list(rows), path)


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """`results.csv`: one line per method, the skipped shares in one column per unit and the
    calibration outcome flattened."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with_f1 = any("f1" in r for r in rows)
    fields = ["method", "kind", "accuracy"] + (["f1"] if with_f1 else [])
    fields += ["flop_speedup", "measured_speedup"]
    fields += [f"skipped_{u}" for u in SKIP_UNITS]
    fields += ["calib_accuracy", "calib_super_accuracy", "target_met", "setting"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            cal = r.get("calibration") or {}
            line = {k: r.get(k, "") for k in fields[: fields.index("skipped_inputs")]}
            line.update({f"skipped_{u}": r["skipped"].get(u, "") for u in SKIP_UNITS})
            line.update(
                calib_accuracy=cal.get("accuracy", ""),
                calib_super_accuracy=cal.get("reference_accuracy", ""),
                target_met=cal.get("target_met", ""),
                setting=jsonio.dumps(cal["setting"], indent=None) if cal else "",
            )
            writer.writerow(line)
    return path


def plot_frontier(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str = ""
) -> Path:
    """`frontier.png`: accuracy against measured speed-up, one marker per method (named in
    the legend), Super and Swift as black reference stars, a dashed line at Super's
    accuracy."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9.5, 5.0), dpi=120)
    markers = "osD^vP<>Xh"
    try:
        others = 0
        for r in rows:
            x, y = r["measured_speedup"], 100 * r["accuracy"]
            label = f"{r['method']}: {y:.2f}%, {x:.2f}x"
            if r["method"] in REFERENCE_METHODS:
                ax.scatter(x, y, marker="*", s=260, color="black", zorder=3, label=label)
                ax.annotate(
                    r["method"],
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, 9),
                    ha="center",
                    weight="bold",
                )
            else:
                marker = markers[others % len(markers)]
                ax.scatter(x, y, marker=marker, s=70, zorder=3, label=label)
                others += 1
        supers = [r for r in rows if r["method"] == "Super"]
        if supers:
            ax.axhline(100 * supers[0]["accuracy"], color="grey", lw=0.8, ls="--", zorder=1)
        ax.set_xlabel("measured speed-up vs Super (wall-clock under jit)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title or "accuracy vs measured speed-up", fontsize=10)
        ax.grid(alpha=0.3)
        xs = [r["measured_speedup"] for r in rows]
        ax.set_xlim(0, max(xs) * 1.15 + 0.1)
        ys = [100 * r["accuracy"] for r in rows]
        pad = max(0.5, 0.08 * (max(ys) - min(ys)))
        ax.set_ylim(min(ys) - pad, max(ys) + 3 * pad)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def write_all(
    rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], title: str = ""
) -> list[Path]:
    """results.json, results.csv and frontier.png in `out_dir`."""
    out = Path(out_dir)
    return [
        write_json(rows, out / "results.json"),
        write_csv(rows, out / "results.csv"),
        plot_frontier(rows, out / "frontier.png", title),
    ]
