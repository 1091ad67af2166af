#!/usr/bin/env bash
# Full-size prefill + memory benchmark on one CUDA GPU: the Qwen2.5-Omni-3B thinker text shape (hidden 2048,
# 36 layers, 16/2 heads, MLP 11008, vocab 151936) with dummy weights, bfloat16, SDPA, every method at retain
# 0.7/0.4/0.1 on 1500 and 7500 audio tokens, 10 interleaved rounds; peak allocated memory per configuration,
# plus vanilla and HeadRouter 0.4 with lm_head on every position (what a stock prefill computes; the engine keeps
# the last position only, so these rows show what that saves).
# Then the batch section (bench/batch.py): the same shape at batch 1, 8, 32, 64 on 300-s chunks, vanilla and HeadRouter
# 0.4, 256 new tokens each, audio seconds per second and peak memory (the KV cache of 64 unpruned chunks is ~17 GB).
# Expected under 8 minutes on an H100/H200-class GPU (~7 GB of weights); it stops itself at 9 minutes.
#
#   bench/gpu.sh [OUT_DIR]        # default bench/results/gpu-latest; writes bench.json and bench.md
#
# Needs a CUDA build of torch and the pinned transformers (pip install -r requirements.txt -c constraints.txt
# after a CUDA torch). Nothing is downloaded: the weights are random.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
OUT="${1:-bench/results/gpu-latest}"
"$PY" - <<'PYEOF'
import sys

import torch
import transformers

if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible: this script measures the full-size model on a GPU")
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| transformers", transformers.__version__)
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout "${BENCH_TIMEOUT_S:-540}" "$PY" -m jobs.bench all --full-size --out "$OUT"
