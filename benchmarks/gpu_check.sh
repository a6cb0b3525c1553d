#!/usr/bin/env bash
# The GPU check: one command, under 8 minutes on one recent NVIDIA GPU, nothing downloaded.
#
#   benchmarks/gpu_check.sh            paper sizes with random weights, bf16 (needs CUDA)
#   benchmarks/gpu_check.sh --tiny     the tiny preset; on the CPU when there is no GPU (tested)
#
# Flags go to both parts (`.venv/bin/python benchmarks/gpu_check.py --help`). Two parts, each
# in its own process under a time limit: the steps (both stages, checkpointing off and on:
# time, peak memory, FLOPs, MFU) and generation; then the strategies (their own `minigpt5
# fit` runs, saved and resumed) with what is left of the total. A part that fails or runs out
# of time leaves a row saying so, and the script then exits 1. What is measured and how:
# benchmarks/gpu_check.py and benchmarks/README.md.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONFAULTHANDLER=1
TOTAL=${GPU_CHECK_SECONDS:-450}        # both parts; each may overrun by the 15 s grace of `timeout`
STEPS=${GPU_CHECK_STEPS_SECONDS:-200}  # the first part's share
status=0

part() {  # part NAME LIMIT [flags]: run one part under `timeout`, a row if it fails
  local name=$1 limit=$2 rc
  shift 2
  if [ "$limit" -lt 30 ]; then
    echo "| $name | skipped: $limit s left of $TOTAL |"
    status=1
    return
  fi
  timeout --kill-after=15 "$limit" "$PYTHON" benchmarks/gpu_check.py --part "$name" "$@"
  rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "| $name | FAILED: timed out after $limit s |"
  elif [ $rc -ne 0 ]; then
    echo "| $name | FAILED: exit code $rc |"
  fi
  [ $rc -eq 0 ] || status=1
}

start=$SECONDS
part steps "$STEPS" "$@"
part strategies $((TOTAL - (SECONDS - start))) "$@"
echo
echo "gpu check: $((SECONDS - start)) s"
exit $status
