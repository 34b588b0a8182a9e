#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one go, sized for one 10-minute call on one
# H100/H200 (bf16). Each step has its own time limit, so a slow step costs only itself.
#
#   OUT=/tmp/suite bash benchmarks/gpu_suite.sh          # GPU; CIFAR-10 pack in .data/
#   SMALL=1 OUT=/tmp/suite bash benchmarks/gpu_suite.sh  # CPU smoke test of the script itself
#
# Environment: OUT (results folder), NPZ (CIFAR-10 pack, default .data/cifar10_jpeg.npz),
# PYTHON (default python3), STEPS (the steps to run, in that order; default: throughput
# resnet20 progressive net2net time_to_accuracy scale_down scale_down_resnet50
# throughput_more; also scale_down_resnet50_alt: ResNet-50 scale-down with other settings
# against scale_down_resnet50's full run), SET_<step> (space-separated KEY=VALUE options
# for a study step's config, e.g. SET_net2net="seeds=0 budgets=10,20"),
# SMALL=1 (tiny settings, CPU), BUDGET_S (seconds for the whole run, see below),
# COPY_TO (a folder that receives suite.log and results.tgz after each step).
# It needs jax, flax, optax, orbax-checkpoint, chex, pillow and matplotlib (torch for the
# throughput reference), and runs from the checkout: no install, no tensorflow-datasets.
# Compiled programs go to JAX's persistent cache (JAX_COMPILATION_CACHE_DIR, default
# /tmp/jax_cache), so later steps and seeds reuse the compiles of earlier ones.
# Writes $OUT/suite.log (one line per step: command, exit code, seconds) and
# $OUT/results.tgz (every step's log and result files), refreshed after each step.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_suite}
NPZ=${NPZ:-.data/cifar10_jpeg.npz}
PY=${PYTHON:-python3}
STEPS=${STEPS:-throughput resnet20 progressive net2net time_to_accuracy scale_down scale_down_resnet50 throughput_more}
SMALL=${SMALL:-0}
# Whole-run budget (default 540 s; 3600 s with SMALL=1): a step's limit shrinks to what is
# left, and a step with under 30 s left is skipped, so the suite ends inside one device call.
BUDGET_S=${BUDGET_S:-$([ "$SMALL" = 1 ] && echo 3600 || echo 540)}
DEADLINE=$(($(date +%s) + BUDGET_S))
mkdir -p "$OUT/results" "$OUT/logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
# JAX's default takes 75% of GPU memory; ResNet-50's stage-0 activation cache alone is 52 GB
# (scale-down caches what fits in half the free memory), so take more.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
LOG="$OUT/suite.log"

pack() {  # every result so far into $OUT/results.tgz (after each step: a cut-off keeps them)
  (cd "$OUT" && { find runs -name metrics.jsonl 2>/dev/null; echo results; echo logs; } |
    tar czf results.tgz -T -)
  if [ -n "${COPY_TO:-}" ]; then mkdir -p "$COPY_TO" && cp "$OUT/results.tgz" "$LOG" "$COPY_TO/"; fi
}

run_step() {  # name limit_s command... ; the limit shrinks to what the whole budget has left
  local name=$1 limit=$(($2 * LIMIT_SCALE)) start rc left
  shift 2
  left=$((DEADLINE - $(date +%s)))
  if ((left < 30)); then
    echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  start=$(date +%s)
  timeout "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  echo "== $name: rc=$rc, $(($(date +%s) - start)) s" | tee -a "$LOG"
  tail -n 15 "$OUT/logs/$name.log"
  pack
}

study_sets() {  # SET_<step>="key=value ..." as experiments/run.py --set flags
  local var="SET_$1" kv
  for kv in ${!var:-}; do printf -- '--set %s ' "$kv"; done
}

{
  date -u +"%Y-%m-%d %H:%M UTC"
  git rev-parse --short HEAD 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} | tee -a "$LOG"

LIMIT_SCALE=1
if [ "$SMALL" = 1 ]; then
  LIMIT_SCALE=5  # CPU compiles dominate the tiny settings
  DATA=(--dataset digits)
  TRAIN=(--epochs 1 --batch-size 64 --dtype float32)
  SCALE_JSON='{"mode": "cache", "check_every": 5, "target_compute": 1.0, "patience": 1}'
  ARCH=(--arch resnet20 --arch-json '{"stage_depths": [1, 1], "stage_widths": [4, 8]}')
  EXPERIMENT=(--dataset digits --tiny)
  THROUGHPUT=(--small --nets resnet18 --steps 1 --no-torch)
else
  # Decode the JPEG pack once into raw uint8 arrays that every step then reads directly.
  # Skipped when a previous call on the same (still warm) machine already decoded it.
  mkdir -p /tmp/cifar10_raw
  [ -s /tmp/cifar10_raw/cifar10.npz ] || run_step decode 120 "$PY" -c "
import numpy as np
from jnet2net.data import load_npz
splits = {s: load_npz('$NPZ', s) for s in ('train', 'test')}
np.savez('/tmp/cifar10_raw/cifar10.npz', **{f'{s}_{k}': getattr(d, k) for s, d in splits.items() for k in ('images', 'labels')})
print({s: d.images.shape for s, d in splits.items()})"
  DATA=(--dataset cifar10 --data-dir /tmp/cifar10_raw)
  TRAIN=(--batch-size 512 --dtype bfloat16 --lr 0.2 --warmup-epochs 2 --weight-decay 5e-4)
  SCALE_JSON='{"mode": "cache", "check_every": 25, "target_compute": 0.6}'
  ARCH=(--arch resnet20)
  EXPERIMENT=(--dataset cifar10 --npz /tmp/cifar10_raw/cifar10.npz)
  THROUGHPUT=(--nets resnet18)
fi

step_throughput() {
  run_step throughput 120 "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}" \
    --json "$OUT/results/throughput.jsonl"
}
step_resnet20() {  # the reference: ResNet-20, 60 epochs, 88.5% in 23 s of training (H100)
  # (--save-every 1000: only the final checkpoint; per-epoch saves took 2/3 of the wall time)
  local epochs=(--epochs 60)
  [ "$SMALL" = 1 ] && epochs=()
  run_step resnet20 150 "$PY" -m jnet2net train "${ARCH[@]}" "${DATA[@]}" "${TRAIN[@]}" \
    "${epochs[@]}" --no-progress --keep 1 --save-every 1000 --out "$OUT/runs/resnet20"
}
step_progressive() {  # quarter -> half -> full ResNet-20 vs scratch
  [ "$SMALL" = 1 ] && return
  run_step progressive 150 "$PY" experiments/run.py configs/studies/progressive_gpu.py \
    --set out="$OUT/results/progressive" $(study_sets progressive)
}
step_net2net() {  # half-width teacher -> wider / deeper / both students vs scratch
  [ "$SMALL" = 1 ] && return
  run_step net2net 240 "$PY" experiments/run.py configs/studies/net2net_protocol_gpu.py \
    --set out="$OUT/results/net2net" $(study_sets net2net)
}
step_time_to_accuracy() {  # half-width ResNet-20 -> full width, 10-epoch budget
  local budget=(--epochs 10 --teacher-epochs 15 --batch-size 512 --lr 0.2)
  [ "$SMALL" = 1 ] && budget=()
  run_step time_to_accuracy 150 "$PY" benchmarks/time_to_accuracy.py "${EXPERIMENT[@]}" \
    "${budget[@]}" --out "$OUT/results/time_to_accuracy" --json "$OUT/results/time_to_accuracy.jsonl"
}
step_scale_down() {  # ResNet-18: full vs scale-down (cache mode), equal epochs
  local arch18=(--arch resnet18 --epochs 15)
  [ "$SMALL" = 1 ] && arch18=("${ARCH[@]}")
  run_step scale_down_full 90 "$PY" -m jnet2net train "${arch18[@]}" "${DATA[@]}" \
    "${TRAIN[@]}" --no-progress --keep 1 --save-every 1000 --out "$OUT/runs/resnet18_full"
  run_step scale_down_cut 90 "$PY" -m jnet2net train "${arch18[@]}" "${DATA[@]}" \
    "${TRAIN[@]}" --no-progress --keep 1 --save-every 1000 --scale-down --scale-json "$SCALE_JSON" \
    --out "$OUT/runs/resnet18_scale_down"
}
step_scale_down_resnet50() {  # ResNet-50: the >= 2x at <= 1 point target
  [ "$SMALL" = 1 ] && return
  run_step scale_down_resnet50 360 "$PY" experiments/run.py \
    configs/studies/scale_down_gpu_resnet50.py --set out="$OUT/results/scale_down" \
    $(study_sets scale_down_resnet50)
}
step_scale_down_resnet50_alt() {  # the same against the same full run, other settings
  [ "$SMALL" = 1 ] && return
  local alt="$OUT/results/scale_down_alt"
  mkdir -p "$alt/runs"
  cp "$OUT"/results/scale_down/runs/resnet50_full_s*.jsonl "$alt/runs/" 2>/dev/null
  run_step scale_down_resnet50_alt 150 "$PY" experiments/run.py \
    configs/studies/scale_down_gpu_resnet50.py --set out="$alt" \
    $(study_sets scale_down_resnet50_alt)
}
step_throughput_more() {  # rows are written as each net finishes
  [ "$SMALL" = 1 ] && return
  run_step throughput_more 200 "$PY" benchmarks/throughput.py --nets resnet50 vgg16 \
    --json "$OUT/results/throughput.jsonl"
}

for name in $STEPS; do
  if ! declare -F "step_$name" >/dev/null; then
    echo "== $name: no such step" | tee -a "$LOG"
    continue
  fi
  "step_$name"
done

pack
echo "results: $OUT/results.tgz" | tee -a "$LOG"
