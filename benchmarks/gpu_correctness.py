"""GPU correctness check for the dropless dispatch (Triton path) vs transformers' eager loop.

Forward outputs and gradients (hidden states, routing weights, both expert weights), fp32 and bf16,
random shapes incl. empty experts and a single token; plus torch.compile(fullgraph=True) on CUDA.
Writes a JSON report to argv[1]. Exit code 0 iff every check passed.
"""
import json
import pathlib
import sys
import time
import traceback

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_layer import _import_dispatch, _make_experts, machine_info  # noqa: E402

md = _import_dispatch()
mt = md._moe_triton
report = {"machine": machine_info("cuda"), "triton_available": bool(mt is not None and mt.available()), "checks": []}
print(json.dumps(report["machine"]), "triton_available:", report["triton_available"], flush=True)

SHAPES = [  # T, H, I, E, k, used experts
    (1, 64, 96, 4, 1, None), (1, 64, 96, 8, 2, None), (7, 64, 128, 8, 2, 3), (333, 128, 96, 8, 2, None),
    (1000, 256, 512, 32, 2, 20), (4096, 256, 512, 8, 2, None), (2048, 256, 512, 32, 1, None), (513, 96, 160, 6, 3, 5),
]
NAMES = ["out", "d_hidden", "d_routing_w", "d_gate_up", "d_down"]


def run(cfg, m, x, idx, w, dy, impl):
    cfg._experts_implementation = impl
    m.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_(True)
    ww = w.clone().requires_grad_(True)
    out = m(xx, idx, ww)
    out.backward(dy)
    return [out.detach(), xx.grad, ww.grad, m.gate_up_proj.grad.clone(), m.down_proj.grad.clone()]


ok = report["triton_available"]
for dtype in (torch.float32, torch.bfloat16):
    for T, H, I, E, k, used in SHAPES:
        g = torch.Generator().manual_seed(T + E)
        cfg, m = _make_experts(H, I, E, dtype, "cuda")
        used_e = used or E
        idx = torch.stack([torch.randperm(used_e, generator=g)[:k] for _ in range(T)]).to("cuda")
        x = torch.randn(T, H, generator=g).to("cuda", dtype)
        w = torch.rand(T, k, generator=g).to("cuda", dtype)
        dy = torch.randn(T, H, generator=g).to("cuda", dtype)
        entry = {"dtype": str(dtype), "shape": [T, H, I, E, k, used]}
        try:
            ref = run(cfg, m, x, idx, w, dy, "eager")
            got = run(cfg, m, x, idx, w, dy, "dropless")
            errs = {}
            for n, a, b in zip(NAMES, ref, got):
                scale = a.float().abs().max().clamp_min(1e-6).item()
                errs[n] = (b.float() - a.float()).abs().max().item() / scale
            tol = 1e-4 if dtype == torch.float32 else 6e-2
            entry["rel_err"] = errs
            entry["ok"] = all(v < tol for v in errs.values()) and all(torch.isfinite(t).all().item() for t in got)
            if used and used < E:
                entry["empty_experts_zero_grad"] = bool(got[3][used:].abs().max() == 0 and got[4][used:].abs().max() == 0)
                entry["ok"] = entry["ok"] and entry["empty_experts_zero_grad"]
        except Exception:  # noqa: BLE001
            entry["ok"] = False
            entry["error"] = traceback.format_exc()[-2000:]
        ok = ok and entry["ok"]
        report["checks"].append(entry)
        print(entry.get("ok"), entry["dtype"], entry["shape"], {k_: f"{v:.1e}" for k_, v in entry.get("rel_err", {}).items()},
              entry.get("error", ""), flush=True)

# torch.compile(fullgraph=True) on CUDA (aot_eager keeps compile time short; inductor forward if time allows)
for backend in ("aot_eager", "inductor"):
    entry = {"compile_backend": backend}
    try:
        t0 = time.time()
        torch._dynamo.reset()
        cfg, m = _make_experts(128, 256, 8, torch.bfloat16, "cuda")
        cfg._experts_implementation = "dropless"
        x = torch.randn(512, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w, idx = torch.topk(torch.randn(512, 8, device="cuda").softmax(-1), 2)
        w = w.to(torch.bfloat16)
        f = torch.compile(m, fullgraph=True, backend=backend)
        out = f(x, idx, w)
        out.float().sum().backward()
        ref = md.dropless_experts_forward(m, x.detach(), idx, w)
        entry["max_rel_diff"] = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        entry["ok"] = entry["max_rel_diff"] < 2e-2 and x.grad is not None
        entry["seconds"] = time.time() - t0
    except Exception:  # noqa: BLE001
        entry["ok"] = False
        entry["error"] = traceback.format_exc()[-2000:]
    ok = ok and entry["ok"]
    report["checks"].append(entry)
    print(entry, flush=True)

report["all_ok"] = bool(ok)
pathlib.Path(sys.argv[1]).write_text(json.dumps(report, indent=1))
print("ALL_OK" if ok else "SOME_FAILED", flush=True)
sys.exit(0 if ok else 1)
