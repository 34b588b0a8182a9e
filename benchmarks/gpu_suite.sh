#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one go, sized for one 10-minute call on one
# H100/H200 (bf16). Each step has its own time limit, so a slow step costs only itself.
#
#   OUT=/tmp/suite bash benchmarks/gpu_suite.sh          # GPU; CIFAR-10 pack in .data/
#   SMALL=1 OUT=/tmp/suite bash benchmarks/gpu_suite.sh  # CPU smoke test of the script itself
#
# Environment: OUT (results folder), NPZ (CIFAR-10 pack, default .data/cifar10_jpeg.npz),
# PYTHON (default python3), STEPS (space-separated subset of: throughput resnet20
# progressive net2net time_to_accuracy scale_down throughput_more; default all, in that
# order of priority),
# SMALL=1 (tiny settings, CPU), BUDGET_S (seconds for the whole run, see below).
# It needs jax, flax, optax, orbax-checkpoint, chex, pillow and matplotlib (torch for the
# throughput reference), and runs from the checkout: no install, no tensorflow-datasets.
# Writes $OUT/suite.log (one line per step: command, exit code, seconds) and
# $OUT/results.tgz (every step's log and result files), refreshed after each step.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_suite}
NPZ=${NPZ:-.data/cifar10_jpeg.npz}
PY=${PYTHON:-python3}
STEPS=${STEPS:-throughput resnet20 progressive net2net time_to_accuracy scale_down throughput_more}
SMALL=${SMALL:-0}
# Whole-run budget (default 540 s; 3600 s with SMALL=1): a step's limit shrinks to what is
# left, and a step with under 30 s left is skipped, so the suite ends inside one device call.
BUDGET_S=${BUDGET_S:-$([ "$SMALL" = 1 ] && echo 3600 || echo 540)}
DEADLINE=$(($(date +%s) + BUDGET_S))
mkdir -p "$OUT/results" "$OUT/logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/suite.log"

pack() {  # every result so far into $OUT/results.tgz (after each step: a cut-off keeps them)
  (cd "$OUT" && { find runs -name metrics.jsonl 2>/dev/null; echo results; echo logs; } |
    tar czf results.tgz -T -)
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

wanted() { [[ " $STEPS " == *" $1 "* ]]; }

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
  mkdir -p /tmp/cifar10_raw
  run_step decode 120 "$PY" -c "
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

if wanted throughput; then
  run_step throughput 120 "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}" \
    --json "$OUT/results/throughput.jsonl"
fi
if wanted resnet20; then  # the reference: ResNet-20, 60 epochs, 88.5% in 23 s of training (H100)
  EPOCHS=(--epochs 60)
  [ "$SMALL" = 1 ] && EPOCHS=()
  run_step resnet20 150 "$PY" -m jnet2net train "${ARCH[@]}" "${DATA[@]}" "${TRAIN[@]}" \
    "${EPOCHS[@]}" --no-progress --keep 1 --out "$OUT/runs/resnet20"
fi
if wanted progressive && [ "$SMALL" != 1 ]; then  # quarter -> half -> full ResNet-20 vs scratch
  run_step progressive 150 "$PY" experiments/run.py configs/studies/progressive_gpu.py \
    --set out="$OUT/results/progressive"
fi
if wanted net2net && [ "$SMALL" != 1 ]; then  # half-width teacher -> wider student vs scratch
  run_step net2net 150 "$PY" experiments/run.py configs/studies/net2net_protocol_gpu.py \
    --set out="$OUT/results/net2net"
fi
if wanted time_to_accuracy; then  # half-width ResNet-20 -> full width, 10-epoch budget
  BUDGET=(--epochs 10 --teacher-epochs 15 --batch-size 512 --lr 0.2)
  [ "$SMALL" = 1 ] && BUDGET=()
  run_step time_to_accuracy 150 "$PY" benchmarks/time_to_accuracy.py "${EXPERIMENT[@]}" \
    "${BUDGET[@]}" --out "$OUT/results/time_to_accuracy" --json "$OUT/results/time_to_accuracy.jsonl"
fi
if wanted scale_down; then  # ResNet-18: full vs scale-down (cache mode), equal epochs
  ARCH18=(--arch resnet18 --epochs 15)
  [ "$SMALL" = 1 ] && ARCH18=("${ARCH[@]}")
  run_step scale_down_full 90 "$PY" -m jnet2net train "${ARCH18[@]}" "${DATA[@]}" \
    "${TRAIN[@]}" --no-progress --keep 1 --out "$OUT/runs/resnet18_full"
  run_step scale_down_cut 90 "$PY" -m jnet2net train "${ARCH18[@]}" "${DATA[@]}" \
    "${TRAIN[@]}" --no-progress --keep 1 --scale-down --scale-json "$SCALE_JSON" \
    --out "$OUT/runs/resnet18_scale_down"
fi
if wanted scale_down && [ "$SMALL" != 1 ]; then  # ResNet-50: the >= 2x at <= 1 point target
  run_step scale_down_resnet50 200 "$PY" experiments/run.py \
    configs/studies/scale_down_gpu_resnet50.py --set out="$OUT/results/scale_down"
fi

if wanted throughput_more && [ "$SMALL" != 1 ]; then  # rows are written as each net finishes
  run_step throughput_more 200 "$PY" benchmarks/throughput.py --nets resnet50 vgg16 \
    --json "$OUT/results/throughput.jsonl"
fi

pack
echo "results: $OUT/results.tgz" | tee -a "$LOG"
