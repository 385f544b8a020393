"""What a user would run instead of our compiled cascade: the same two fine-tuned checkpoints
in transformers' PyTorch, cascaded the way the peers' code does it (`_eval_pair`).

* TangoBERT's way: the Swift over every input of a served batch, then the hard inputs
  gathered into one smaller batch (trimmed to its longest row) for the Super;
* the E-LANG code's way: one input at a time (batch size 1), the Super only when the Swift's
  score is below the threshold.

Both route with the same rule and threshold as our step (keep the Swift's answer where its
score >= threshold, the score computed by `elang_jax.routing.score` on the PyTorch Swift's
logits), so the comparison is at equal routing; the agreement of their routing and
predictions with our step's is reported with the times. Each input runs at its own length in
the batch-1 peer (no padding), the most favourable setting for it. torch and transformers
are imported only when a comparison runs.

Shape vocabulary: b batch rows, t padded length, c classes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from elang_jax import data as D
from elang_jax.routing import score

TANGO_ROW = "PyTorch TangoBERT re-batching"
BATCH1_ROW = "PyTorch batch 1 (E-LANG code)"


def _load(path: Path) -> Any:
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(path))
    return model.eval()


def _inputs(batch: D.Batch, rows: np.ndarray, model: Any) -> dict[str, Any]:
    """`rows` of a padded batch as torch tensors, cut to their longest row."""
    import torch

    mask = np.asarray(batch.attention_mask)[rows]
    t = max(1, int(mask.sum(-1).max())) if len(rows) else 1
    out = {
        "input_ids": torch.tensor(np.asarray(batch.input_ids)[rows, :t], dtype=torch.long),
        "attention_mask": torch.tensor(mask[:, :t], dtype=torch.long),
    }
    if model.config.model_type != "mpnet":  # MPNet has no token types
        types = np.asarray(batch.token_type_ids)[rows, :t]
        out["token_type_ids"] = torch.tensor(types, dtype=torch.long)
    return out


def torch_peers(
    swift_dir: Path,
    super_dir: Path,
    swift: str,
    kind: str,
    threshold: float,
) -> dict[str, Callable[[Any], np.ndarray]]:
    """The two PyTorch cascades as functions of a dict of per-tier batches (like our step's
    forward) returning [b] predictions (-1 on padding rows).

    Args:
      swift_dir, super_dir: the fine-tuned Hugging Face directories (`<run>/final`).
      swift: the key of the Swift's batch in the dict (its role).
      kind: the escalation score; threshold: keep the Swift's answer where score >= it.
    """
    import torch

    models = {swift: _load(swift_dir), "super": _load(super_dir)}

    def logits(role: str, batch: D.Batch, rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = models[role](**_inputs(batch, rows, models[role])).logits
        return out.float().numpy()

    def tango(b: Mapping[str, D.Batch]) -> np.ndarray:
        valid = np.flatnonzero(np.asarray(b["super"].valid))
        pred = np.full(len(b["super"].valid), -1, np.int64)
        swift_logits = logits(swift, b[swift], valid)
        keep = np.asarray(score(kind, swift_logits)) >= threshold
        pred[valid[keep]] = swift_logits[keep].argmax(-1)
        hard = valid[~keep]
        if len(hard):  # the hard inputs, re-batched for the Super
            pred[hard] = logits("super", b["super"], hard).argmax(-1)
        return pred

    def one_at_a_time(b: Mapping[str, D.Batch]) -> np.ndarray:
        pred = np.full(len(b["super"].valid), -1, np.int64)
        for i in np.flatnonzero(np.asarray(b["super"].valid)):
            row = np.array([i])
            out = logits(swift, b[swift], row)
            if float(np.asarray(score(kind, out))[0]) < threshold:
                out = logits("super", b["super"], row)
            pred[i] = int(out[0].argmax())
        return pred

    return {TANGO_ROW: tango, BATCH1_ROW: one_at_a_time}


def prediction_agreement(
    fn: Callable[[Mapping[str, D.Batch]], Any],
    batches: list[dict[str, D.Batch]],
    reference: np.ndarray,
) -> float:
    """Share of valid rows where `fn`'s predictions equal `reference`'s (dataset order)."""
    same = total = 0
    for b in batches:
        v = np.asarray(b["super"].valid)
        got = np.asarray(fn(b))[v]
        same += int((got == reference[np.asarray(b["super"].index)[v]]).sum())
        total += int(v.sum())
    return same / max(total, 1)
