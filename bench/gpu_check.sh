#!/usr/bin/env bash
# bench/gpu_check.sh -- every method family on CUDA (fp16 and bf16, unstructured and 2:4, in memory and with
# --offload cpu/disk), on the embedded model and a tiny sliding-window Gemma 3; prints seconds and peak CUDA
# memory per run and exits non-zero on any failure. Needs a GPU and `make setup` (torch built for its CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d ../shared/data ]; then export WANDA_DATA_DIR="$(cd ../shared/data && pwd)"; fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PY:-.venv/bin/python}
exec "$PY" bench/gpu_check.py "$@"
