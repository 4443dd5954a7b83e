#!/usr/bin/env bash
# Model-level efficiency benchmark on a lent GPU machine (issue 5): Traffic-MoE vs dense ET-BERT-shape,
# dense equal-total-parameters and SwitchTransformers encoders, flow lengths 128/256/512, bf16 and fp32.
# Needs only torch + transformers (the GPU image has both); writes JSON/PNG/log under $OUT.
set -uo pipefail
OUT=${OUT:-benchmarks/efficiency/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/model_nvidia_smi.txt"
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$OUT/model_versions.txt"
for dtype in bfloat16 float32; do
  timeout 200 python -m traffic_moe_hf.bench --device cuda --dtype $dtype --no-layer \
      --json "$OUT/model_$dtype.json" --png "$OUT/model_$dtype.png" 2>&1 | tee "$OUT/model_$dtype.log"
done
