#!/usr/bin/env bash
# One-shot GPU check for issue 5 (dropless dispatch): correctness vs eager on the Triton path, then the
# layer benchmark (bf16 and fp32). Designed to finish in < 6 minutes on one H100. Writes under $OUT
# (or benchmarks/efficiency/results/gpu_run when $OUT is unset). Usage: bash benchmarks/efficiency/gpu_check.sh
set -u
OUT="${OUT:-benchmarks/efficiency/results/gpu_run}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
{
  echo "== $(date -u +%FT%TZ) gpu_check"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
  $PY -c "import triton; print('triton', triton.__version__)" || echo "triton: not importable"
  echo "== correctness"
  timeout 170 $PY benchmarks/efficiency/gpu_correctness.py "$OUT/gpu_correctness.json"; echo "correctness rc=$?"
  echo "== bench bf16"
  timeout 110 $PY benchmarks/efficiency/bench_layer.py --device cuda --dtype bfloat16 --reps 10 \
      --json "$OUT/gpu_bench_bf16.json" --md "$OUT/gpu_bench_bf16.md" --png "$OUT/gpu_bench_bf16.png"; echo "bench bf16 rc=$?"
  echo "== bench fp32"
  timeout 70 $PY benchmarks/efficiency/bench_layer.py --device cuda --dtype float32 --reps 5 --tokens 4096 16384 \
      --json "$OUT/gpu_bench_fp32.json" --md "$OUT/gpu_bench_fp32.md"; echo "bench fp32 rc=$?"
  echo "== done $(date -u +%FT%TZ)"
} 2>&1 | tee "$LOG"
