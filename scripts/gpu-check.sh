#!/usr/bin/env bash
# GPU check: real searches on this machine's NVIDIA GPU(s), each asserted on the tables it wrote (precisions with
# and without the feature cache, two trials on one GPU, a 2-worker DDP trial, a resume after a killed driver, the
# loop-versus-bare throughput ratio); see scripts/gpu_check.py. Run after `bash scripts/setup.sh`:
#   bash scripts/gpu-check.sh [--only NAME]... [--work-dir DIR]
# Prints the device, one line per check with its figure and a summary; exits 1 if any check fails or there is no
# NVIDIA GPU (then it runs nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
elif [ -d /proc/driver/nvidia/gpus ]; then
  gpus=$(find /proc/driver/nvidia/gpus -mindepth 1 -maxdepth 1 | wc -l)
fi
if [ "$gpus" -eq 0 ]; then
  echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi lists none, no /proc/driver/nvidia/gpus); nothing was" \
       "run. Run it on a Linux machine with an NVIDIA GPU and its driver." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "gpu-check: no .venv in $(pwd); run 'bash scripts/setup.sh' first" >&2
  exit 1
fi
export HF_HUB_OFFLINE=1
exec .venv/bin/python scripts/gpu_check.py "$@"
