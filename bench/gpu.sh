#!/usr/bin/env bash
# The engine at full size on one CUDA GPU (bench/gpu_engine.py): the Qwen2.5-Omni-3B thinker shape with a real-size
# audio encoder, random weights, bf16, SDPA, 300-s chunks:
#   - audio encoder ms per chunk, stock per-window attention vs one call per window length (outputs compared);
#   - decode ms per step at batch 1/8/32/64, vanilla and HeadRouter 0.4, beside the bandwidth floor;
#   - end to end audio seconds per second at batch 64 with 900 new tokens per chunk (forced), vanilla /
#     HeadRouter 0.4 / FastV 0.4;
#   - the owned loop's tokens vs transformers' generate (the previous engine) on the same batch.
# Writes OUT/results.json (the schema bench/gpu_results.py reads: commit it as bench/results/gpu-<gpu>-<date>/ and
# `python -m bench.cost` / `jobs.run --dry-run` use its efficiencies) and OUT/bench.md. Expected ~3-4 minutes on an
# H100/H200 including the model build; it stops itself at 5.5 minutes (BENCH_TIMEOUT_S).
#
#   bench/gpu.sh [OUT_DIR]        # default bench/results/gpu-latest
#
# Needs torch with CUDA and transformers 5.24 (no Ray, nothing downloaded). On a machine whose transformers is
# another version, carry wheels (see ../shared/notes/gpu-device.md: `pip download --no-deps --only-binary=:all:
# --python-version 3.12 ... -d WHEELS transformers==5.24.0 "regex>=2025.10.22"`) and set WHEELS=that folder: they
# are installed into a scratch folder put first on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
OUT="${1:-bench/results/gpu-latest}"
export PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ]; then
  SITE="$(mktemp -d)/site"
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'PYEOF'
import sys

import torch
import transformers

if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible: this script measures the full-size model on a GPU")
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| transformers", transformers.__version__)
PYEOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p "$OUT"
timeout "${BENCH_TIMEOUT_S:-330}" "$PY" -m bench.gpu_engine --out "$OUT" 2>&1 | tee "$OUT/run.log"
