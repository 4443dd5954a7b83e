#!/usr/bin/env bash
# Everything issue 5 measures on a lent GPU, in one call of at most ~8 minutes, each step under its own timeout
# so that one failing step loses only its own figures. Writes under $OUT (default benchmarks/efficiency/results/gpu).
#   1. correctness of the Triton paths (fused inference kernels, differentiable kernels, torch.compile)
#   2. model benchmark, bf16: Traffic-MoE (default path and transformers' grouped_mm) vs the ET-BERT shape
#   3. layer benchmark, bf16 forward (the fused inference path against eager / grouped_mm / the dense floor)
# Status: an earlier version of this script ran once on an H200 (2026-12-04, benchmarks/efficiency/results/gpu_h200/): its
# correctness step timed out after the fp32 shapes (Triton compiles per autotune config), its model step broke on
# a CUDA-graph measurement since removed. This version (fixed tiles in the check, two autotune configs, no graph
# capture) has not run on a GPU yet. benchmarks/efficiency/gpu_profile.py prints profiler tables of one forward.
set -u
OUT="${OUT:-benchmarks/efficiency/results/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
{
  echo "== $(date -u +%FT%TZ) gpu_session"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  $PY -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
  echo "== correctness $(date -u +%T)"
  TRAFFIC_MOE_TRITON_AUTOTUNE=0 timeout 170 $PY benchmarks/efficiency/gpu_correctness.py "$OUT/gpu_correctness.json"; echo "correctness rc=$?"
  echo "== model bf16 $(date -u +%T)"
  timeout 150 $PY -m traffic_moe_hf.bench --device cuda --dtype bfloat16 --no-layer \
      --models dense-etbert traffic-moe-base traffic-moe-base:grouped_mm traffic-moe-small traffic-moe-small:grouped_mm \
               traffic-moe-tiny dense-tiny \
      --json "$OUT/model_bfloat16.json" --png "$OUT/model_bfloat16.png" > "$OUT/model_bfloat16.md"; echo "model bf16 rc=$?"
  echo "== layer bf16, forward $(date -u +%T)"
  timeout 60 $PY benchmarks/efficiency/bench_layer.py --device cuda --dtype bfloat16 --reps 10 --tokens 2048 16384 --modes fwd \
      --json "$OUT/gpu_bench_bf16.json" --md "$OUT/gpu_bench_bf16.md" --png "$OUT/gpu_bench_bf16.png"; echo "layer rc=$?"
  echo "== done $(date -u +%FT%TZ)"
} 2>&1 | tee "$OUT/gpu_session.log"
