"""Exit decisions offline (from every exit's logits) and their calibration.

`simulate_exits` applies an exit policy to precomputed logits exactly as the compiled step
does, so thresholds can be swept on a calibration split without running the model again;
`calibrate_exits` hands the resulting operating points to the shared `calibrate`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from elang_jax.calibration import (
    CalibrationTarget,
    OperatingPoint,
    calibrate,
    threshold_candidates,
)
from elang_jax.exits._config import ExitPolicy
from elang_jax.routing import score


@dataclasses.dataclass(frozen=True)
class ExitDecisions:
    """Where each example leaves. exit_index [n], predictions [n], layers [n]."""

    exit_index: np.ndarray
    predictions: np.ndarray
    layers: np.ndarray


def exit_scores(
    logits: np.ndarray, policy: ExitPolicy | str, temperatures: np.ndarray | None = None
) -> np.ndarray:
    """[x n] float32 confidence of every exit under the policy's score."""
    policy = ExitPolicy(policy)
    logits = np.asarray(logits, np.float32)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape [exits, n, classes], got {logits.shape}")
    temps = np.ones(logits.shape[0], np.float32) if temperatures is None else temperatures
    return np.stack(
        [np.asarray(score(policy.score, logits[k], float(temps[k]))) for k in range(len(temps))]
    )


def simulate_exits(
    logits: np.ndarray,
    exit_layers: tuple[int, ...],
    policy: ExitPolicy | str,
    threshold: float = math.inf,
    patience: int = 2,
    temperatures: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> ExitDecisions:
    """The compiled step's decisions from every exit's logits [x n c]."""
    policy = ExitPolicy(policy)
    logits = np.asarray(logits, np.float32)
    e, n, _ = logits.shape
    if len(exit_layers) != e:
        raise ValueError(f"{e} exits of logits but {len(exit_layers)} exit layers")
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    preds = logits.argmax(-1)
    if policy is ExitPolicy.PATIENCE:
        agree = np.zeros(n, np.int64)
        leave = np.zeros((e, n), bool)
        for k in range(e):
            if k > 0:
                agree = np.where(preds[k] == preds[k - 1], agree + 1, 0)
            leave[k] = agree >= patience
    else:
        s = exit_scores(logits, policy, temperatures) if scores is None else scores
        leave = s >= np.float32(threshold)
    leave[-1] = True
    idx = leave.argmax(axis=0)
    return ExitDecisions(
        exit_index=idx,
        predictions=preds[idx, np.arange(n)],
        layers=np.asarray(exit_layers)[idx],
    )


def candidate_settings(
    logits: np.ndarray,
    policy: ExitPolicy | str,
    temperatures: np.ndarray | None = None,
    num: int = 200,
) -> list[float]:
    """Thresholds (or patiences) to sweep, from the most conservative to the most aggressive."""
    policy = ExitPolicy(policy)
    e = np.asarray(logits).shape[0]
    if policy is ExitPolicy.PATIENCE:
        return [float(p) for p in range(e, 0, -1)]
    s = exit_scores(logits, policy, temperatures)[:-1].ravel()
    # Between scores, never on one: an example's exit must not hinge on float noise.
    return [float(t) for t in threshold_candidates(s, num)]


def calibrate_exits(
    logits: np.ndarray,
    labels: np.ndarray,
    exit_layers: tuple[int, ...],
    policy: ExitPolicy | str,
    target: CalibrationTarget,
    temperatures: np.ndarray | None = None,
    num_layers: int | None = None,
) -> OperatingPoint:
    """The threshold (or patience, for PATIENCE) meeting `target` on a calibration split.

    Cost is the share of layers run (exit layer / num_layers); the reference is the final
    exit. `setting` of the result is the threshold (or patience).
    """
    policy = ExitPolicy(policy)
    logits = np.asarray(logits, np.float32)
    labels = np.asarray(labels)
    num_layers = exit_layers[-1] if num_layers is None else num_layers
    settings = candidate_settings(logits, policy, temperatures)
    s = None if policy is ExitPolicy.PATIENCE else exit_scores(logits, policy, temperatures)
    correct, cost = [], []
    for v in settings:
        d = (
            simulate_exits(logits, exit_layers, policy, patience=int(v))
            if policy is ExitPolicy.PATIENCE
            else simulate_exits(logits, exit_layers, policy, threshold=v, scores=s)
        )
        correct.append(d.predictions == labels)
        cost.append(d.layers.mean() / num_layers)
    reference = logits[-1].argmax(-1) == labels
    return calibrate(np.stack(correct), np.asarray(cost), reference, target, settings)
