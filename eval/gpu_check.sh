#!/usr/bin/env bash
# One accelerator check, under 8 minutes on one H100/H200:
#   1. the bench suite (`elang-jax bench`, full preset),
#   2. the cascade at batch 512 x 128 tokens (MiniLM-L6 shapes, `--only cascade`),
#   3. the Pallas MoE kernels compiled (interpret=False) against their references,
#   4. the sharded serving steps over every local device against the one-device steps.
#
#   bash eval/gpu_check.sh [--dry-run] [--out DIR]
#
# --dry-run (automatic when JAX sees no accelerator): everything tiny on CPU, the kernels in
# interpret mode, the sharded steps on 8 forced CPU devices; it checks that the script and
# every check run, never speed. Results: DIR/*.json and DIR/gpu_check.log (default
# gpu_check_results/). Exit status 1 if a step fails; every step still runs.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
OUT=gpu_check_results
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "usage: bash eval/gpu_check.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"

if [[ $DRY == 0 ]]; then
  BACKEND=$(python -c "import jax; print(jax.default_backend())" 2>/dev/null || echo cpu)
  if [[ $BACKEND == cpu ]]; then
    echo "no accelerator found: running the dry run" | tee -a "$LOG"
    DRY=1
  fi
fi
if [[ $DRY == 1 ]]; then
  export JAX_PLATFORMS=cpu
  BENCH=(--quick --batch-size 8 --seq-len 16 --rounds 1)
  CASCADE=(--quick --batch-size 64 --seq-len 16 --rounds 1)
  PYFLAGS=(--dry-run)
  SHARDED_ENV="XLA_FLAGS=--xla_force_host_platform_device_count=8"
  SCALE=10  # a shared 2-core CPU compiles slowly: the limits guard against hangs, not speed
else
  BENCH=()
  CASCADE=(--batch-size 512 --seq-len 128)
  PYFLAGS=()
  SHARDED_ENV=""
  SCALE=1  # limits sum to 7.5 min
fi

STATUS=0
run() {  # run NAME SECONDS COMMAND...: a step with a time limit, timed, logged
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$LOG"
  local start=$SECONDS
  if timeout "$((limit * SCALE))" "$@" >> "$LOG" 2>&1; then
    echo "== $name: ok in $((SECONDS - start)) s" | tee -a "$LOG"
  else
    echo "== $name: FAILED (status $?) after $((SECONDS - start)) s" | tee -a "$LOG"
    STATUS=1
  fi
}

TOTAL=$SECONDS
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  python -c "import jax; print('jax', jax.__version__, jax.default_backend(), jax.devices())"
} >> "$LOG" 2>&1
run bench 210 python -m elang_jax.benchmarks "${BENCH[@]}" --json "$OUT/bench.json"
run cascade_512 60 python -m elang_jax.benchmarks --only cascade "${CASCADE[@]}" \
  --json "$OUT/cascade_512.json"
run kernels 60 python eval/gpu_check.py kernels "${PYFLAGS[@]}" --json "$OUT/kernels.json"
run sharded 120 env $SHARDED_ENV python eval/gpu_check.py sharded "${PYFLAGS[@]}" \
  --json "$OUT/sharded.json"
echo "== total $((SECONDS - TOTAL)) s (dry run: $DRY), status $STATUS; log: $LOG" | tee -a "$LOG"
exit $STATUS
