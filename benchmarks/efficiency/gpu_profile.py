"""Where the time goes in one forward on a GPU: torch.profiler tables for Traffic-MoE `base` (default experts
implementation and transformers' grouped_mm) and the dense ET-BERT shape, bf16, 128 tokens, batch 1 and 128.
Usage: python benchmarks/efficiency/gpu_profile.py OUT.txt (needs CUDA)."""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from traffic_moe_hf.bench import build, inputs_for

out = open(sys.argv[1], "w")
for name in ("traffic-moe-base", "traffic-moe-base:grouped_mm", "dense-etbert"):
    base, _, impl = name.partition(":")
    with torch.device("cuda"):
        model, structured = build(base)
    model = model.to(dtype=torch.bfloat16)
    if structured:
        from traffic_moe_hf.moe_dispatch import default_experts_implementation

        model.set_experts_implementation(impl or default_experts_implementation("cuda", torch.bfloat16))
    for batch in (1, 128):
        x = inputs_for(batch, 128, structured, "cuda")
        with torch.inference_mode():
            for _ in range(3):
                model(**x)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    model(**x)
                torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60)
        out.write(f"\n===== {name} batch {batch} x 128 tokens, bf16, 3 forwards =====\n{table}\n")
        out.flush()
        print(f"profiled {name} batch {batch}", flush=True)
    del model
    torch.cuda.empty_cache()
