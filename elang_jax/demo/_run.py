"""The demo from end to end: weights, fine-tuning, calibration, evaluation, timing, report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from elang_jax import data
from elang_jax.demo import _methods as M
from elang_jax.demo._config import DemoConfig
from elang_jax.demo._data import DemoData, load_data, read_eval_file
from elang_jax.demo._models import (
    FinetunedModel,
    base_checkpoint,
    file_identity,
    finetune,
    finetune_config,
    fingerprint,
    load_tokenizer,
)
from elang_jax.demo._report import format_buckets, format_table, make_row, write_all
from elang_jax.demo._timing import measure, timing_subset
from elang_jax.timing import logits_fn
from elang_jax.training import classification_metrics


@dataclasses.dataclass
class DemoResult:
    """What a demo run produced.

    Attributes:
      rows: one row per method on the dev split (see `make_row`).
      eval_rows: the same on the user's evaluation file, if one was given.
      finetune: per model ("super", "swift"): dev accuracy after fine-tuning, seconds spent
        fine-tuning in this run, whether it came from the cache.
      seconds: wall time of the whole run.
      files: files written under the output directory.
    """

    rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]] | None
    finetune: dict[str, dict[str, Any]]
    seconds: float
    files: list[Path]


class _Stages:
    """Numbered stage lines with their wall time, and progress bars on a terminal."""

    def __init__(self, total: int, progress: bool, echo: Callable[[str], None]):
        self.total, self.done, self.echo = total, 0, echo
        self.bars = progress and sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.start = self.t0

    def begin(self, what: str) -> None:
        self.done += 1
        self.start = time.perf_counter()
        self.echo(f"[{self.done}/{self.total}] {what}")

    def note(self, what: str) -> None:
        self.echo(f"      {what}")

    def end(self, what: str = "") -> None:
        took = time.perf_counter() - self.start
        total = time.perf_counter() - self.t0
        self.echo(f"      {what + ' ' if what else ''}({took:.0f} s; {total:.0f} s in all)")

    def bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.bars, leave=False, dynamic_ncols=True)


@contextlib.contextmanager
def compile_cache(cache: Path):
    """Compiled programs persist in `cache/xla` across runs (a warm run compiles almost
    nothing); the process's previous settings come back afterwards."""
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {n: getattr(jax.config, n) for n in names}
    # The cache binds to its directory once per process: reset it so that this run's
    # directory is the one used, and again afterwards.
    compilation_cache.reset_cache()
    jax.config.update(names[0], os.fspath(cache / "xla"))
    jax.config.update(names[1], 0.2)
    try:
        yield
    finally:
        for n, v in before.items():
            jax.config.update(n, v)
        compilation_cache.reset_cache()


def _calibration_key(config: DemoConfig, super_: FinetunedModel, swift: FinetunedModel) -> str:
    # Everything that can change a calibration outcome: both models, and every setting but
    # the ones that only decide how results are timed or shown, or how the MoE step runs
    # (an example's output never depends on its batch). The buckets stay: the outcomes hold
    # the bucket sets fitted to the calibration split, and the composed row is chosen by
    # the FLOPs its buckets execute.
    ignore = {"preset", "cache_dir", "timing_rounds", "timing_batches", "eval_limit", "progress"}
    ignore |= {"moe_impl"}
    # Flat field names (`flat_json`): caches keyed before the config had sections still match.
    settings = {k: v for k, v in config.flat_json().items() if k not in ignore}
    return fingerprint(
        settings,
        file_identity(super_.workdir / "final" / "model.safetensors"),
        file_identity(swift.workdir / "final" / "model.safetensors"),
    )


def build_methods(
    config: DemoConfig,
    super_: FinetunedModel,
    swift: FinetunedModel,
    data_: DemoData,
    stages: _Stages,
) -> list[M.Method]:
    """Super and Swift, then every method calibrated (Super first: it is the reference).

    Calibration outcomes are cached in `<cache>/derived/calibration-<key>.json`: a run with
    the same models and settings rebuilds every method from its cached setting.
    """
    super_fn, swift_fn = logits_fn(super_.model), logits_fn(swift.model)
    calib = M.Calibration(data_.calib, config, super_fn, swift_fn)
    derived = config.cache_path / "derived"
    known_file = derived / f"calibration-{_calibration_key(config, super_, swift)}.json"
    known: dict[str, Any] = json.loads(known_file.read_text()) if known_file.is_file() else {}
    if known:
        stages.note(f"calibration outcomes from the cache ({known_file.name})")
    built: dict[str, M.Method] = {}
    for key, name, score in (
        ("elang", "E-LANG energy cascade", "energy"),
        ("tangobert", "TangoBERT max-prob", "max_prob"),
    ):
        stages.note(f"{name}: threshold")
        built[key] = M.cascade(
            name, score, swift.model, super_.model, calib, config, known.get(key)
        )
    identity = file_identity(super_.workdir / "final" / "model.safetensors")
    fit_keys = [
        config.task,
        config.calibration.holdout,
        config.calibration.holdout_seed,
        data.HoldoutKind(config.calibration.holdout_kind).value,
    ]
    fit_keys += [config.max_length, config.seed]
    exit_key = fingerprint(
        identity,
        fit_keys,
        config.exits.train_examples,
        config.exits.epochs,
        config.exits.exit_pooling,
    )
    me = M.exit_model(
        super_.model,
        data_.exit_fit,
        config,
        derived / f"exit_heads-{exit_key}.npz",
        progress=lambda s: stages.note(f"multi-exit: {s}"),
    )
    built["exits"] = M.multi_exit(
        me,
        calib,
        config,
        progress=lambda s: stages.note(f"multi-exit: {s}"),
        known=known.get("exits"),
    )
    stages.note("ACC token pruning: keep schedule")
    bar = stages.bar(len(config.pruning.acc_targets) + 1, "ACC candidates")
    try:
        built["acc"] = M.token_pruning(
            super_.model, calib, config, progress=bar.update, known=known.get("acc")
        )
    finally:
        bar.close()
    moe_key = fingerprint(
        identity,
        fit_keys,
        config.eval.batch_size,
        config.eval.buckets,
        config.moe.train_examples,
        config.moe.max_tokens,
        config.moe.experts,
        min(config.moe.top_k),
        config.moe.router_epochs,
        # Only with calibration, so that caches made before it existed keep their key.
        *(
            (config.moe.calibration_steps, config.moe.calibration_lr, config.finetune.batch_size)
            if config.moe.calibration_steps
            else ()
        ),
    )
    built["moe"] = M.moefied(
        super_.model,
        data_.moe_fit,
        calib,
        config,
        derived / f"moe-{moe_key}.npz",
        finetune_config(config, "super", base_checkpoint(config)),
        progress=lambda s: stages.note(f"MoE: {s}"),
        known=known.get("moe"),
    )
    # One pass over the calibration split per candidate schedule, when not cached.
    passes = 0 if known.get("composed") else len(config.compose.acc_targets)
    bar = stages.bar(passes * len(calib.batches) if passes else 0, "composed")
    try:
        built["composed"] = M.composed_exits_acc(
            me,
            calib,
            config,
            progress=lambda s: stages.note(f"composed (exits + ACC): {s}"),
            known=known.get("composed"),
            tick=bar.update,
        )
    finally:
        bar.close()
    outcomes = {k: m.calibration for k, m in built.items()}
    if outcomes != known:
        derived.mkdir(parents=True, exist_ok=True)
        known_file.write_text(json.dumps(outcomes, indent=2) + "\n")
    return [
        M.reference("Super", super_.model, super_fn),
        M.reference("Swift", swift.model, swift_fn),
        *built.values(),
    ]


def report_rows(
    config: DemoConfig,
    methods: Sequence[M.Method],
    encoded: data.Encoded,
    stages: _Stages,
) -> list[dict[str, Any]]:
    """Every method evaluated on one dataset and timed against Super on its batches."""
    assert encoded.labels is not None
    metrics = data.GLUE_TASKS[config.task].metrics
    batches = M.make_batches(encoded, config)
    bar = stages.bar(len(methods) * len(batches), "evaluating")
    t0 = time.perf_counter()
    try:
        evals = {m.name: M.evaluate(m, batches, len(encoded), bar.update) for m in methods}
    finally:
        bar.close()
    t1 = time.perf_counter()
    super_method = methods[0]
    timed = timing_subset(batches, config.eval.timing_batches)
    timings = measure(super_method, methods, timed, config.eval.timing_rounds, stages.bar)
    stages.note(
        f"evaluated {len(batches)} batches ({t1 - t0:.0f} s, compiling included), "
        f"timed {len(timed)} of them ({time.perf_counter() - t1:.0f} s)"
    )
    rows = []
    for m in methods:
        ev = evals[m.name]
        scores = classification_metrics(ev.predictions, encoded.labels, metrics)
        timing = timings.get(m.name)
        extra: dict[str, Any] = {}
        if "f1" in scores:
            extra["f1"] = scores["f1"]
        rows.append(
            make_row(
                m.name,
                m.kind,
                scores["accuracy"],
                evals[super_method.name].flops / ev.flops,
                1.0 if timing is None else timing.speedup,
                ev.skipped,
                **extra,
                seconds_per_pass=None if timing is None else timing.seconds,
                super_seconds_per_pass=None if timing is None else timing.reference_seconds,
                calibration=m.calibration,
                examples=len(encoded),
            )
        )
    return rows


def run_demo(
    config: DemoConfig,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    eval_file: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Runs the demo (see the `elang-jax demo` help) and prints its table.

    Args:
      config: what to run.
      out_dir: where results.json, results.csv and frontier.png go (and, for `eval_file`,
        the same under `out_dir/eval_file/`); None writes nothing.
      eval_file: a labelled TSV in the task's GLUE dev format to evaluate on as well.
      echo: where progress lines and tables go.
    """
    t0 = time.perf_counter()
    # Checked before anything slow: a typo in the path must not cost a fine-tuning run.
    eval_examples = None if eval_file is None else read_eval_file(config.task, eval_file)
    cache = config.cache_path
    cache.mkdir(parents=True, exist_ok=True)
    with compile_cache(cache):
        return _run(config, cache, eval_file, eval_examples, out_dir, echo, t0)


def _run(
    config: DemoConfig,
    cache: Path,
    eval_file: str | os.PathLike[str] | None,
    eval_examples: data.GlueExamples | None,
    out_dir: str | os.PathLike[str] | None,
    echo: Callable[[str], None],
    t0: float,
) -> DemoResult:
    stages = _Stages(6 + (eval_file is not None), config.progress, echo)
    echo(f"elang-jax demo: task {config.task}, preset {config.preset}, cache {cache}")

    stages.begin("pretrained weights")
    base = base_checkpoint(config)
    stages.end(base or "random initialisation")
    models: dict[str, FinetunedModel] = {}
    for name, label in (("super", "Super"), ("swift", f"Swift ({config.swift_layers} layers)")):
        stages.begin(f"fine-tuning {label}")
        models[name] = ft = finetune(config, name, base)
        acc = "" if ft.dev_accuracy is None else f"dev accuracy {100 * ft.dev_accuracy:.2f}%"
        stages.end(("reused from the cache, " if ft.cached else "") + acc)

    stages.begin("data: calibration split, dev, training samples")
    tokenizer = load_tokenizer(config, base)
    data_ = load_data(config, tokenizer, models["super"].model.config.vocab_size, eval_examples)
    stages.end(
        f"{len(data_.calib)} calibration, {len(data_.dev)} dev"
        + ("" if data_.eval_file is None else f", {len(data_.eval_file)} from the eval file")
    )

    stages.begin(
        f"calibrating every method (accuracy within {100 * config.calibration.epsilon:g} points)"
    )
    methods = build_methods(config, models["super"], models["swift"], data_, stages)
    stages.end()

    stages.begin(f"dev: evaluating and timing ({config.eval.timing_rounds} rounds)")
    rows = report_rows(config, methods, data_.dev, stages)
    # What explains a row's speed (the MoE row: each layer's expert load on dev).
    dev_batches = M.make_batches(data_.dev, config)
    diagnostics = {m.name: m.diagnose(dev_batches) for m in methods if m.diagnose is not None}
    stages.end()
    eval_rows = None
    if data_.eval_file is not None:
        stages.begin(f"{eval_file}: evaluating and timing")
        eval_rows = report_rows(config, methods, data_.eval_file, stages)
        stages.end()

    device = jax.devices()[0].device_kind
    title = (
        f"{config.task} dev ({len(data_.dev)} examples), batch {config.eval.batch_size}, "
        f"{device}; speed-ups vs Super"
    )
    echo("")
    echo(format_table(rows, title))
    if eval_rows is not None and data_.eval_file is not None:
        echo("")
        echo(format_table(eval_rows, f"{eval_file} ({len(data_.eval_file)} examples)"))
    for name, (text, _) in diagnostics.items():
        echo("")
        echo(f"{name} on {config.task} dev:")
        echo(text)
    if buckets := format_buckets(methods, config.eval.batch_size):
        echo("")
        echo(buckets)
    seconds = time.perf_counter() - t0
    finetune_info = {
        k: dict(dev_accuracy=v.dev_accuracy, seconds=v.seconds, cached=v.cached)
        for k, v in models.items()
    }
    files: list[Path] = []
    if out_dir is not None:
        out = Path(out_dir)
        files += write_all(rows, out, title)
        if eval_rows is not None:
            files += write_all(eval_rows, out / "eval_file", f"{eval_file}")
        run = dict(
            config=config.to_json(),
            eval_file=None if eval_file is None else os.fspath(eval_file),
            finetune=finetune_info,
            seconds=seconds,
            device=device,
            calibration_examples=len(data_.calib),
            dev_examples=len(data_.dev),
            diagnostics={name: js for name, (_, js) in diagnostics.items()},
        )
        path = out / "run.json"
        path.write_text(json.dumps(run, indent=2, default=str) + "\n")
        files.append(path)
        echo(f"wrote {', '.join(os.fspath(f) for f in files)}")
    echo(f"done in {seconds:.0f} s")
    return DemoResult(rows, eval_rows, finetune_info, seconds, files)
