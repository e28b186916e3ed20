#!/usr/bin/env bash
# GPU training throughput: aepipe's loop against a bare loop and its CUDA graph (benchmarks/gpu.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PYTHONPATH=${PYTHONPATH:-.} "$PY" benchmarks/gpu.py "$@"
