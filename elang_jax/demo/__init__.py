"""`elang-jax demo`: every adaptive-compute method on a fine-tuned MiniLM, in one command.

Fine-tunes (or reuses from the cache) a 6-layer Super and a 2-layer Swift, calibrates each
method on held-out training examples for accuracy within half a point of Super (E-LANG and
TangoBERT cascades, multi-exit, ACC token pruning, MoEfication, and a composed system that
exits early and prunes tokens at once, `elang_jax.compose`), then reports accuracy, FLOP
and measured speed-up against Super, and the work each method skips.

Typical use::

    from elang_jax import demo

    result = demo.run_demo(demo.DemoConfig.full("sst2"), out_dir="/tmp/demo")
    result.rows  # one dict per method

    # Sections are changed as mappings of the fields that differ:
    demo.DemoConfig.quick("mrpc", moe={"experts": 16}, eval={"timing_rounds": 5})
"""

# Configuration, its sections and presets.
from elang_jax.demo._config import (
    TASKS,
    CalibrationSection,
    CascadeSection,
    ComposeSection,
    DemoConfig,
    DemoError,
    EvalSection,
    ExitsSection,
    FinetuneSection,
    MoESection,
    PruningSection,
)

# Data, including a user's own evaluation file.
from elang_jax.demo._data import DemoData, load_data, read_eval_file

# Methods, their evaluation and timing.
from elang_jax.demo._methods import Calibration, Evaluation, Method, RowStats, evaluate
from elang_jax.demo._models import FinetunedModel, finetune, finetune_config

# Reports.
from elang_jax.demo._report import (
    format_table,
    make_row,
    plot_frontier,
    write_all,
    write_csv,
    write_json,
)

# The whole run.
from elang_jax.demo._run import DemoResult, run_demo
from elang_jax.demo._timing import measure

__all__ = [
    # Configuration
    "TASKS",
    "DemoConfig",
    "DemoError",
    "CalibrationSection",
    "CascadeSection",
    "ComposeSection",
    "EvalSection",
    "ExitsSection",
    "FinetuneSection",
    "MoESection",
    "PruningSection",
    # Data
    "DemoData",
    "load_data",
    "read_eval_file",
    # Models
    "FinetunedModel",
    "finetune",
    "finetune_config",
    # Methods
    "Calibration",
    "Evaluation",
    "Method",
    "RowStats",
    "evaluate",
    "measure",
    # Reports
    "format_table",
    "make_row",
    "plot_frontier",
    "write_all",
    "write_csv",
    "write_json",
    # Run
    "DemoResult",
    "run_demo",
]
