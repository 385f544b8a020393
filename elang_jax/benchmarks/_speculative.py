"""Self-speculative decoding against plain greedy decoding of the same GPT-2.

Two entry points:
  * `speculative_table(models, config)`: the evaluation of trained byte-level GPT-2s on
    held-out SST-2 dev prompts (eval/speculative_gpt2.py): for each model, batch size and
    draft setting, the tokens are checked identical to greedy decoding, then both are timed
    side by side (`time_interleaved`);
  * `bench_speculative(config)`: the `elang-jax bench` row. The byte-level LayerSkip GPT-2
    trained by eval/speculative_gpt2.py when it is in the cache (weights "cached" or
    "auto"), else a random model of the same shape (quick and tiny presets: the tiny GPT-2),
    whose early exit rarely agrees with the full model: there, the row shows the overhead.

Shape names: b batch, t prompt bytes, n new tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from elang_jax.benchmarks._config import BenchConfig
from elang_jax.benchmarks._result import BenchResult, make_result
from elang_jax.models._gpt2 import GPT2Config, GPT2LMHeadModel
from elang_jax.models._gpt2_generate import _generate_jit as _greedy_jit
from elang_jax.speculative._config import SpeculativeConfig
from elang_jax.speculative._self_spec import _generate_jit as _speculative_jit
from elang_jax.speculative._self_spec import check_speculative
from elang_jax.timing import time_interleaved

BASELINE = "greedy"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpeculativeEvalConfig:
    """The evaluation's grid.

    Attributes:
      batches: batch sizes (rows: the first held-out prompts).
      draft_layers: draft depths L_d to try.
      ks: tokens drafted per verification call.
      new_tokens: n, bytes generated per row.
      prompt_bytes: t, each prompt's length (the first bytes of a held-out sentence).
      rounds: timing rounds.
    """

    batches: tuple[int, ...] = (1, 8, 64)
    draft_layers: tuple[int, ...] = (1, 2)
    ks: tuple[int, ...] = (3,)
    new_tokens: int = 64
    prompt_bytes: int = 24
    rounds: int = 5

    def __post_init__(self):
        for name in ("batches", "draft_layers", "ks"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                raise ValueError(f"{name} must be non-empty positive ints, got {values!r}")
        for name in ("new_tokens", "prompt_bytes", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def settings(self) -> tuple[SpeculativeConfig, ...]:
        return tuple(
            SpeculativeConfig(draft_layers=d, k=k) for d in self.draft_layers for k in self.ks
        )


def setting_name(config: SpeculativeConfig) -> str:
    return f"spec_L{config.draft_layers}_k{config.k}"


def _candidates(
    model: GPT2LMHeadModel,
    ids: np.ndarray,
    settings: tuple[SpeculativeConfig, ...],
    new_tokens: int,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Zero-argument calls (greedy and each setting) and what each setting did."""
    mask = np.ones_like(ids)
    graphdef, state = nnx.split(model)
    eos = jnp.int32(-1 if model.config.eos_token_id is None else model.config.eos_token_id)
    pad = jnp.int32(model.config.generation_pad_id)
    ids_j, mask_j = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    n = new_tokens

    def greedy():
        return _greedy_jit(graphdef, state, ids_j, mask_j, eos, pad, max_new_tokens=n)

    want = np.asarray(greedy())
    calls, info = {BASELINE: greedy}, {}
    for s in settings:
        check_speculative(model, ids, mask, n, s)

        def spec(s=s):
            return _speculative_jit(
                graphdef, state, ids_j, mask_j, eos, pad, max_new_tokens=n, config=s
            )

        out = spec()
        identical = bool(np.array_equal(np.asarray(out.tokens), want))
        if not identical:
            rows = np.flatnonzero(np.any(np.asarray(out.tokens) != want, axis=1))
            raise AssertionError(f"{setting_name(s)} differs from greedy decoding in rows {rows}")
        calls[setting_name(s)] = spec
        info[setting_name(s)] = dict(
            identical=identical,
            acceptance_rate=out.acceptance_rate(),
            tokens_per_call=out.tokens_per_call(),
            batch_calls=int(out.iterations),
            draft_layers=s.draft_layers,
            k=s.k,
        )
    return calls, info


def speculative_table(
    models: Mapping[str, GPT2LMHeadModel], config: SpeculativeEvalConfig
) -> dict[str, Any]:
    """Greedy vs self-speculative decoding of every model at every batch size (see module)."""
    from elang_jax.speculative._text import encode, heldout_sentences

    t = config.prompt_bytes
    prompts = [encode(s)[:t] for s in heldout_sentences() if len(encode(s)) > t]
    if len(prompts) < max(config.batches):
        raise ValueError(f"only {len(prompts)} held-out prompts of > {t} bytes")
    # Teacher-forced agreement of each exit with the last layer on held-out sentences.
    from elang_jax.speculative._text import EOS
    from elang_jax.speculative._train import exit_agreement

    text = [[*encode(s), EOS] for s in heldout_sentences()[-256:]]
    stream = np.concatenate(text)[: 64 * 128].reshape(64, 128).astype(np.int32)
    agreement = {
        name: [float(x) for x in np.asarray(exit_agreement(model, jnp.asarray(stream)))]
        for name, model in models.items()
    }
    rows = []
    for name, model in models.items():
        for b in config.batches:
            # [b t] the first b prompts, all t bytes long: no padding.
            ids = np.array(prompts[:b], np.int32)
            calls, info = _candidates(model, ids, config.settings, config.new_tokens)
            timings = time_interleaved(calls, config.rounds)
            base = timings[BASELINE].median_ms
            for cand, meta in info.items():
                rows.append(
                    dict(
                        model=name,
                        batch=b,
                        setting=cand,
                        greedy_ms=base,
                        speculative_ms=timings[cand].median_ms,
                        speedup=base / timings[cand].median_ms,
                        **meta,
                    )
                )
    return dict(
        config=dataclasses.asdict(config),
        exit_agreement=agreement,
        rows=rows,
        device=str(jnp.zeros(()).device),
    )


def format_speculative(result: Mapping[str, Any]) -> str:
    """The table as text, one line per (model, batch, setting)."""
    head = (
        f"{'model':<10} {'batch':>5} {'setting':<12} {'accept':>6} {'tok/call':>8} "
        f"{'greedy ms':>10} {'spec ms':>9} {'speed-up':>8}"
    )
    lines = [
        f"exit agreement with the last layer (teacher-forced, dev text), layer 1..L: {name} "
        + " ".join(f"{a:.3f}" for a in agree)
        for name, agree in result.get("exit_agreement", {}).items()
    ]
    lines += [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['model']:<10} {r['batch']:>5} {r['setting']:<12} {r['acceptance_rate']:>6.2f} "
            f"{r['tokens_per_call']:>8.2f} {r['greedy_ms']:>10.1f} {r['speculative_ms']:>9.1f} "
            f"{r['speedup']:>7.2f}x"
        )
    return "\n".join(lines)


def _bench_model(config: BenchConfig) -> tuple[GPT2LMHeadModel, str]:
    """The cached LayerSkip byte GPT-2 if asked for and present, else a random model."""
    if config.model == "tiny":
        cfg = GPT2Config.tiny(n_layer=3)
        return GPT2LMHeadModel(cfg, rngs=nnx.Rngs(config.seed)), "random tiny GPT-2"
    from elang_jax.checkpoints import cache_dir
    from elang_jax.speculative._text import byte_gpt2_config, load_model

    cfg = byte_gpt2_config()
    found = sorted((cache_dir() / "speculative").glob("gpt2_bytes_layerskip_*.pkl"))
    if config.weights != "random" and found:
        return load_model(cfg, found[-1]), f"trained byte GPT-2 ({found[-1].name})"
    return GPT2LMHeadModel(cfg, rngs=nnx.Rngs(config.seed)), "random byte GPT-2"


def bench_speculative(config: BenchConfig) -> BenchResult:
    """Greedy vs self-speculative decoding (one draft setting) at the config's batch size."""
    model, source = _bench_model(config)
    n_layer = model.config.n_layer
    setting = SpeculativeConfig(draft_layers=max(1, n_layer // 3), k=3)
    b = config.batch_size
    # Prompts of up to 24 tokens and half the benchmark's length in new tokens (full: 32,
    # quick: 16, tiny: 8): compiling the decode loop is most of a small run's time.
    t = min(config.seq_len, 24)
    n = min(max(1, config.seq_len // 2), model.config.n_positions - t - setting.k)
    rng = np.random.RandomState(config.seed)
    if source.startswith("trained"):
        from elang_jax.speculative._text import encode, heldout_sentences

        texts = [encode(s)[:t] for s in heldout_sentences() if len(encode(s)) > t]
        ids = np.array((texts * (b // len(texts) + 1))[:b], np.int32)
    else:
        # [b t] random ids below the EOS (the tiny config's last id).
        ids = rng.randint(0, model.config.vocab_size - 1, (b, t)).astype(np.int32)
    calls, info = _candidates(model, ids, (setting,), n)
    timings = time_interleaved(calls, config.rounds)
    args = dict(
        model=source,
        batch_size=b,
        prompt_len=t,
        new_tokens=n,
        num_layers=n_layer,
        draft_layers=setting.draft_layers,
        k=setting.k,
        rounds=config.rounds,
    )
    notes = (
        "tokens identical to greedy decoding (checked before timing); a random model's early "
        "exit seldom agrees with the full model, so there the row measures the overhead",
    )
    return make_result("speculative", timings, BASELINE, args, info=info, notes=notes)


# ----------------------------------------------------------------------------------------------
# Swift-to-Super speculative cascade: quality against speed over calibrated thresholds


@dataclasses.dataclass(frozen=True, kw_only=True)
class CascadeEvalConfig:
    """The cascade evaluation.

    Attributes:
      k: tokens the Swift drafts per Super call.
      batch: rows per timed batch (held-out prompts).
      calibration_rows: prompts of the calibration split (the first held-out sentences;
        the evaluation uses the next `batch`).
      epsilons: per-token disagreement targets, one calibrated threshold each.
      delta: the guarantee's failure probability.
      new_tokens, prompt_bytes, rounds: as `SpeculativeEvalConfig`.
    """

    k: int = 3
    batch: int = 64
    calibration_rows: int = 256
    epsilons: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05)
    delta: float = 0.1
    new_tokens: int = 64
    prompt_bytes: int = 24
    rounds: int = 5


def _super_nll(model: GPT2LMHeadModel, ids: np.ndarray, out: np.ndarray, eos: int) -> float:
    """The Super's mean negative log-likelihood of generated tokens (through the first EOS)."""
    import jax

    seq = jnp.asarray(np.concatenate([ids, out], axis=1), jnp.int32)
    t = ids.shape[1]
    logp = jax.nn.log_softmax(model(seq).logits[:, t - 1 : -1], axis=-1)
    tok = jnp.take_along_axis(logp, jnp.asarray(out)[..., None], axis=-1)[..., 0]
    # [b n] tokens up to and including the first EOS count.
    after = np.cumsum(out == eos, axis=1) - (out == eos) > 0
    keep = ~after
    return float(-np.sum(np.asarray(tok) * keep) / np.sum(keep))


def cascade_curve(
    super_model: GPT2LMHeadModel, swift_model: GPT2LMHeadModel, config: CascadeEvalConfig
) -> dict[str, Any]:
    """Calibrates one threshold per epsilon on the calibration prompts, then decodes the
    held-out prompts with each (and exact, and accept-everything) and times them against
    the Super's greedy decoding."""
    from elang_jax.calibration import CalibrationTarget
    from elang_jax.speculative._cascade import (
        CascadeConfig,
        _cascade_jit,
        calibrate_cascade,
        cascade_token_scores,
        check_cascade,
    )
    from elang_jax.speculative._text import encode, heldout_sentences

    t, n = config.prompt_bytes, config.new_tokens
    prompts = [encode(s)[:t] for s in heldout_sentences() if len(encode(s)) > t]
    cal = np.array(prompts[: config.calibration_rows], np.int32)
    held = np.array(
        prompts[config.calibration_rows : config.calibration_rows + config.batch], np.int32
    )
    eos = int(super_model.config.eos_token_id or 0)
    pad = int(super_model.config.generation_pad_id)
    # Calibration: the Super's greedy continuations of the calibration prompts, teacher-forced.
    cal_out = np.asarray(super_model.generate(cal, None, n))
    scores = cascade_token_scores(super_model, swift_model, np.concatenate([cal, cal_out], 1), t)
    thresholds: dict[str, float] = {"exact": float("inf")}
    bounds: dict[str, float | None] = {"exact": 0.0}
    for eps in config.epsilons:
        target = CalibrationTarget(objective="guarantee", epsilon=eps, delta=config.delta)
        point = calibrate_cascade(scores, target)
        if float(point.setting) in thresholds.values():
            continue  # the same threshold as a looser target's: decoded and timed once
        thresholds[f"eps_{eps:g}"] = float(point.setting)
        bounds[f"eps_{eps:g}"] = point.upper_bound_drop
    if float("-inf") not in thresholds.values():
        thresholds["accept_all"] = float("-inf")

    mask = np.ones_like(held)
    cc = CascadeConfig(k=config.k)
    check_cascade(super_model, swift_model, held, mask, n, cc)
    sd, ss = nnx.split(super_model)
    wd, ws = nnx.split(swift_model)
    ids_j, mask_j = jnp.asarray(held), jnp.asarray(mask)
    e, p = jnp.int32(eos), jnp.int32(pad)

    def greedy():
        return _greedy_jit(sd, ss, ids_j, mask_j, e, p, max_new_tokens=n)

    want = np.asarray(greedy())
    calls: dict[str, Any] = {BASELINE: greedy}
    rows = []
    for name, tau in thresholds.items():

        def run(tau=tau):
            return _cascade_jit(
                sd, ss, wd, ws, ids_j, mask_j, e, p, jnp.float32(tau), max_new_tokens=n, config=cc
            )

        out = run()
        toks = np.asarray(out.tokens)
        calls[name] = run
        rows.append(
            dict(
                setting=name,
                threshold=tau,
                calibration_bound=bounds.get(name),
                token_agreement=float(np.mean(toks == want)),
                identical_rows=float(np.mean(np.all(toks == want, axis=1))),
                super_nll=_super_nll(super_model, held, toks, eos),
                acceptance_rate=out.acceptance_rate(),
                tokens_per_call=out.tokens_per_call(),
            )
        )
    timings = time_interleaved(calls, config.rounds)
    base = timings[BASELINE].median_ms
    for r in rows:
        r["cascade_ms"] = timings[r["setting"]].median_ms
        r["speedup"] = base / r["cascade_ms"]
    return dict(
        config=dataclasses.asdict(config),
        greedy_ms=base,
        super_nll_greedy=_super_nll(super_model, held, want, eos),
        calibration_tokens=int(scores.score.size),
        calibration_swift_agreement=float(np.mean(scores.agrees)),
        rows=rows,
    )


def format_cascade(result: Mapping[str, Any]) -> str:
    head = (
        f"{'setting':<11} {'threshold':>9} {'agree':>6} {'same rows':>9} {'Super NLL':>9} "
        f"{'accept':>6} {'tok/call':>8} {'ms':>8} {'speed-up':>8}"
    )
    lines = [
        f"Super greedy: {result['greedy_ms']:.1f} ms, Super NLL {result['super_nll_greedy']:.3f}",
        head,
        "-" * len(head),
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['setting']:<11} {r['threshold']:>9.3g} {r['token_agreement']:>6.3f} "
            f"{r['identical_rows']:>9.3f} {r['super_nll']:>9.3f} {r['acceptance_rate']:>6.2f} "
            f"{r['tokens_per_call']:>8.2f} {r['cascade_ms']:>8.1f} {r['speedup']:>7.2f}x"
        )
    return "\n".join(lines)
