#!/usr/bin/env bash
# Fine-tunes the models of the SST-2 cascade benchmark (eval/bench_cascade.py):
#   super      all-MiniLM-L6-v2, 6 layers
#   swift      its first 2 layers
#   hard.npy   CascadeBERT difficulty labels from the swift run's own checkpoints
#   swift_dar  the 2-layer Swift again, with CascadeBERT's difficulty-aware ranking loss
# All of them hold out the preset's calibration split: 1,500 whole training sentences
# (seed 0), with every phrase inside them removed from training (HoldoutKind.SENTENCES).
# The Super run and the Swift chain run side by side.
# Usage: bash train/sst2_cascade_models.sh RUNS_DIR [EPOCHS]
set -euo pipefail
runs=${1:?usage: sst2_cascade_models.sh RUNS_DIR [EPOCHS]}
epochs=${2:-2}
common=(--task sst2 --preset sst2_minilm --epochs "$epochs" --no-progress)
here=$(dirname "$0")
python "$here/finetune_glue.py" "${common[@]}" --workdir "$runs/super" &
super=$!
python "$here/finetune_glue.py" "${common[@]}" --workdir "$runs/swift" --num-layers 2 \
    --save-every 500 --keep-checkpoints 20
python "$here/difficulty_labels.py" --workdir "$runs/swift" --out "$runs/hard.npy"
python "$here/finetune_glue.py" "${common[@]}" --workdir "$runs/swift_dar" --num-layers 2 \
    --difficulty-file "$runs/hard.npy"
wait "$super"
