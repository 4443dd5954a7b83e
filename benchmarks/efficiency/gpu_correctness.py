"""GPU correctness check for the dropless dispatch (Triton path) vs transformers' eager loop.

The fused inference kernels (no_grad: gather + gated up-projection + activation in one kernel, routing weight
+ scatter in the down-projection) against eager's forward, with gelu and silu; the differentiable path's
forward outputs and gradients (hidden states, routing weights, both expert weights), fp32 and bf16,
random shapes incl. empty experts and a single token; plus torch.compile(fullgraph=True) on CUDA.
Writes a JSON report to argv[1]. Exit code 0 iff every check passed.
"""
import json
import os
import pathlib
import sys
import time
import traceback

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_layer import _import_dispatch, _make_experts, machine_info  # noqa: E402

md = _import_dispatch()
mt = md._moe_triton
# DEV=cpu with TRITON_INTERPRET=1: a dry run of this script on Triton's CPU interpreter (fp32 only)
DEV = os.environ.get("DEV", "cuda")
report = {"machine": machine_info(DEV), "checks": [],
          "triton_available": bool(mt is not None and mt.available(allow_interpreter=DEV == "cpu"))}
print(json.dumps(report["machine"]), "triton_available:", report["triton_available"], flush=True)

SHAPES = [  # T, H, I, E, k, used experts
    (1, 64, 96, 4, 1, None), (1, 64, 96, 8, 2, None), (7, 64, 128, 8, 2, 3), (333, 128, 96, 8, 2, None),
    (1000, 256, 512, 32, 2, 20), (4096, 256, 512, 8, 2, None), (2048, 256, 512, 32, 1, None), (513, 96, 160, 6, 3, 5),
]
NAMES = ["out", "d_hidden", "d_routing_w", "d_gate_up", "d_down"]


def run(cfg, m, x, idx, w, dy, impl):
    """Forward + backward through the module (impl a name) or through a forward function (impl callable)."""
    m.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_(True)
    ww = w.clone().requires_grad_(True)
    if callable(impl):
        out = impl(m, xx, idx, ww)
    else:
        cfg._experts_implementation = impl
        out = m(xx, idx, ww)
    out.backward(dy)
    return [out.detach(), xx.grad, ww.grad, m.gate_up_proj.grad.clone(), m.down_proj.grad.clone()]


ok = report["triton_available"]
for dtype in (torch.float32, torch.bfloat16) if DEV == "cuda" else (torch.float32,):
    for T, H, I, E, k, used in SHAPES:
        g = torch.Generator().manual_seed(T + E)
        cfg, m = _make_experts(H, I, E, dtype, DEV)
        used_e = used or E
        idx = torch.stack([torch.randperm(used_e, generator=g)[:k] for _ in range(T)]).to(DEV)
        x = torch.randn(T, H, generator=g).to(DEV, dtype)
        w = torch.rand(T, k, generator=g).to(DEV, dtype)
        dy = torch.randn(T, H, generator=g).to(DEV, dtype)
        entry = {"dtype": str(dtype), "shape": [T, H, I, E, k, used]}
        try:
            ref = run(cfg, m, x, idx, w, dy, "eager")
            # fused inference kernels (no_grad path of "dropless" on CUDA): forward only, gelu and silu
            with torch.no_grad():
                assert mt.fused_inference_ok(m), "fused inference path not applicable"
                fused = mt.fused_experts_inference(m, x, idx, w)
                cfg._experts_implementation = "dropless"
                via_module = m(x, idx, w)
                m_act = m.act_fn
                m.act_fn = torch.nn.SiLU()
                cfg._experts_implementation = "eager"
                ref_silu = m(x, idx, w)
                fused_silu = mt.fused_experts_inference(m, x, idx, w)
                m.act_fn = m_act
            scale = ref[0].float().abs().max().clamp_min(1e-6)
            entry["rel_err_fused"] = max(((fused.float() - ref[0].float()).abs().max() / scale).item(),
                                         ((via_module.float() - ref[0].float()).abs().max() / scale).item())
            entry["rel_err_fused_silu"] = ((fused_silu.float() - ref_silu.float()).abs().max()
                                           / ref_silu.float().abs().max().clamp_min(1e-6)).item()
            # the differentiable Triton kernels (dropless trains through them in fp32; in bf16 it uses grouped_mm)
            got = run(cfg, m, x, idx, w, dy, mt.triton_experts_forward if DEV == "cuda" else "dropless")
            errs = {}
            for n, a, b in zip(NAMES, ref, got):
                scale = a.float().abs().max().clamp_min(1e-6).item()
                errs[n] = (b.float() - a.float()).abs().max().item() / scale
            tol = 1e-4 if dtype == torch.float32 else 6e-2
            entry["rel_err"] = errs
            entry["ok"] = (all(v < tol for v in errs.values()) and all(torch.isfinite(t).all().item() for t in got)
                           and entry["rel_err_fused"] < tol and entry["rel_err_fused_silu"] < tol
                           and fused.dtype == ref[0].dtype and bool(torch.isfinite(fused).all()))
            if used and used < E:
                entry["empty_experts_zero_grad"] = bool(got[3][used:].abs().max() == 0 and got[4][used:].abs().max() == 0)
                entry["ok"] = entry["ok"] and entry["empty_experts_zero_grad"]
        except Exception:  # noqa: BLE001
            entry["ok"] = False
            entry["error"] = traceback.format_exc()[-2000:]
        ok = ok and entry["ok"]
        report["checks"].append(entry)
        print(entry.get("ok"), entry["dtype"], entry["shape"], {k_: f"{v:.1e}" for k_, v in entry.get("rel_err", {}).items()},
              "fused", f"{entry.get('rel_err_fused', float('nan')):.1e}", f"silu {entry.get('rel_err_fused_silu', float('nan')):.1e}",
              entry.get("error", ""), flush=True)

# torch.compile(fullgraph=True) on CUDA (aot_eager keeps compile time short; inductor forward if time allows)
for backend in ("aot_eager", "inductor") if DEV == "cuda" else ():
    entry = {"compile_backend": backend}
    try:
        t0 = time.time()
        torch._dynamo.reset()
        cfg, m = _make_experts(128, 256, 8, torch.bfloat16, DEV)
        cfg._experts_implementation = "dropless"
        x = torch.randn(512, 128, device=DEV, dtype=torch.bfloat16, requires_grad=True)
        w, idx = torch.topk(torch.randn(512, 8, device=DEV).softmax(-1), 2)
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
