"""`elang-jax bench`: one speed suite for every adaptive-compute mechanism, no fine-tuning.

Each benchmark times a mechanism against its dense baseline in one process, candidates
interleaved round by round after a compile call each, and returns a `BenchResult`: median
and min milliseconds per candidate, the measured speed-up over the baseline and, where one
applies, the analytic FLOP speed-up (`elang_jax.flops`). Typical use::

    from elang_jax import benchmarks

    results = benchmarks.run_benchmarks(benchmarks.BenchConfig.quick(), ["cascade", "acc"])
    for r in results:
        print(benchmarks.format_table(r))
    benchmarks.write_json(results, "bench_results.json")

or from the shell: `python -m elang_jax.benchmarks --quick --only cascade acc`.

The eval/ scripts are thin drivers of the evaluations here (`evaluate_acc`,
`evaluate_cascades`, `evaluate_exits`, `calm_sweep`, `backbone_against_torch`, and
`bench_moe` with a given FFN): each takes one frozen config and returns JSON-ready results
(`elang_jax.jsonio.write_json`), with a `format_*` function for the terminal. Every timing
goes through the one routine, `elang_jax.timing.time_interleaved`.
"""

# One module per benchmark (`_acc` ... `_moe`), plus the config, timing, results, reports,
# the registry (`_suite`) and the command line (`_cli`); one module per eval/ driver
# (`_eval_*`, `_backbone_torch`); grouped by role in `__all__`.
from elang_jax.benchmarks._acc import bench_acc
from elang_jax.benchmarks._backbone import BackboneSetup, bench_backbone, matmul_gflops
from elang_jax.benchmarks._backbone_torch import (
    backbone_against_torch,
    format_backbone_against_torch,
    torch_factory,
)
from elang_jax.benchmarks._cascade import bench_cascade, escalation_threshold
from elang_jax.benchmarks._cli import add_bench_parser, build_parser, main, run_bench
from elang_jax.benchmarks._compaction import bench_compaction
from elang_jax.benchmarks._compose import bench_compose
from elang_jax.benchmarks._config import BENCHMARK_NAMES, BenchConfig
from elang_jax.benchmarks._eval_acc import (
    AccEvalConfig,
    Gpt2PrefillConfig,
    evaluate_acc,
    format_acc,
    format_gpt2_prefill,
    gpt2_prefill,
)
from elang_jax.benchmarks._eval_calm import CalmEvalConfig, calm_sweep, format_calm
from elang_jax.benchmarks._eval_cascade import (
    CascadeEvalConfig,
    evaluate_cascades,
    format_cascades,
)
from elang_jax.benchmarks._eval_exits import (
    ExitsEvalConfig,
    evaluate_exits,
    exit_curve,
    format_exits,
)
from elang_jax.benchmarks._eval_pair import evaluate_pair, paired_batches
from elang_jax.benchmarks._exits import bench_exits, threshold_for_depth
from elang_jax.benchmarks._moe import bench_moe, random_ffn, random_tokens, real_ffn_inputs
from elang_jax.benchmarks._pair_composed import COMPOSED_ROW, PairComposed
from elang_jax.benchmarks._pair_config import PairEvalConfig
from elang_jax.benchmarks._pair_finetune import finetune_pair
from elang_jax.benchmarks._pair_methods import BASE_METHODS, CASCADEBERT_METHODS, PairMethod
from elang_jax.benchmarks._pair_models import Distill, PairModel
from elang_jax.benchmarks._pair_report import format_pair
from elang_jax.benchmarks._report import format_table, suite_dict, write_json
from elang_jax.benchmarks._result import BenchResult, Candidate, environment
from elang_jax.benchmarks._suite import BENCHMARKS, resolve_names, run_benchmarks
from elang_jax.timing import Timing, time_interleaved

__all__ = [
    "COMPOSED_ROW",
    # Configuration
    "BENCHMARK_NAMES",
    "BenchConfig",
    # Running
    "BENCHMARKS",
    "resolve_names",
    "run_benchmarks",
    # Benchmarks
    "BackboneSetup",
    "bench_acc",
    "bench_backbone",
    "bench_cascade",
    "bench_compaction",
    "bench_compose",
    "bench_exits",
    "bench_moe",
    "escalation_threshold",
    "matmul_gflops",
    "threshold_for_depth",
    # Results and timing
    "BenchResult",
    "Candidate",
    "Timing",
    "environment",
    "time_interleaved",
    # Reports
    "format_table",
    "suite_dict",
    "write_json",
    # Evaluations behind the eval/ scripts
    "AccEvalConfig",
    "CalmEvalConfig",
    "CascadeEvalConfig",
    "ExitsEvalConfig",
    "BASE_METHODS",
    "CASCADEBERT_METHODS",
    "Distill",
    "PairMethod",
    "PairComposed",
    "PairEvalConfig",
    "PairModel",
    "Gpt2PrefillConfig",
    "backbone_against_torch",
    "calm_sweep",
    "evaluate_acc",
    "evaluate_cascades",
    "evaluate_exits",
    "exit_curve",
    "evaluate_pair",
    "finetune_pair",
    "paired_batches",
    "gpt2_prefill",
    "random_ffn",
    "random_tokens",
    "real_ffn_inputs",
    "torch_factory",
    "format_acc",
    "format_backbone_against_torch",
    "format_calm",
    "format_cascades",
    "format_exits",
    "format_pair",
    "format_gpt2_prefill",
    # Command line
    "add_bench_parser",
    "build_parser",
    "main",
    "run_bench",
]
