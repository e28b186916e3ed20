#!/usr/bin/env bash
# GPU training throughput against the card's bf16 peak (benchmarks/gpu.py), eager then compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" benchmarks/gpu.py "$@"
"$PY" benchmarks/gpu.py --compile "$@"
