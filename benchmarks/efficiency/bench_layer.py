"""Layer benchmark for the sparse-MoE expert dispatch (issue 5).

Compares, on the same experts module (transformers' fused 3-D layout):
  * ``eager``      transformers' per-expert loop (the module's own forward),
  * ``grouped_mm`` transformers' grouped_mm implementation,
  * ``dropless``   this project's implementation (moe_dispatch / moe_triton),
  * ``dense``      a gated dense MLP of width k*I on the same tokens: the same *active* FLOPs,
                   the floor a sparse layer can approach,
forward (under ``torch.no_grad``) and forward+backward, medians over interleaved repetitions
after warm-up (implementations alternate inside each repetition so drifts hit all alike).

Importable: ``run_benchmark(...)`` returns a list of result dicts; ``machine_info()``.
CLI: ``python benchmarks/efficiency/bench_layer.py [--quick] [--json OUT] [--png OUT] [--md OUT] [--device cuda]``
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import torch

_SRC = pathlib.Path(__file__).resolve().parents[2] / "src"


def _import_dispatch():
    try:
        from traffic_moe_hf import moe_dispatch  # noqa: PLC0415

        return moe_dispatch
    except Exception:  # noqa: BLE001 - package __init__ may need deps; import the file directly
        p = str(_SRC / "traffic_moe_hf")
        if p not in sys.path:
            sys.path.insert(0, p)
        import moe_dispatch  # noqa: PLC0415

        return moe_dispatch


IMPLS = ("eager", "grouped_mm", "dropless", "dense")


def machine_info(device: str = "cpu") -> dict:
    import transformers  # noqa: PLC0415

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            import triton  # noqa: PLC0415

            info["triton"] = triton.__version__
        except Exception:  # noqa: BLE001
            info["triton"] = None
    return info


def _make_experts(hidden, ffn, experts, dtype, device):
    from transformers import OlmoeConfig  # noqa: PLC0415
    from transformers.models.olmoe.modeling_olmoe import OlmoeExperts  # noqa: PLC0415

    cfg = OlmoeConfig(hidden_size=hidden, intermediate_size=ffn, num_experts=experts, hidden_act="gelu")
    m = OlmoeExperts(cfg)
    with torch.no_grad():
        m.gate_up_proj.normal_(0.0, hidden**-0.5)
        m.down_proj.normal_(0.0, ffn**-0.5)
    return cfg, m.to(device=device, dtype=dtype)


class _DenseGated(torch.nn.Module):
    def __init__(self, hidden, width, dtype, device):
        super().__init__()
        self.up = torch.nn.Linear(hidden, 2 * width, bias=False, device=device, dtype=dtype)
        self.down = torch.nn.Linear(width, hidden, bias=False, device=device, dtype=dtype)

    def forward(self, x):
        gate, up = self.up(x).chunk(2, dim=-1)
        return self.down(torch.nn.functional.gelu(gate) * up)


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_benchmark(
    quick: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
    hidden: int = 256,
    ffn: int = 512,
    tokens=None,
    experts=None,
    topk=None,
    reps: int | None = None,
    warmup: int = 2,
    impls=IMPLS,
    modes=("fwd", "fwdbwd"),
    threads: int | None = None,
    log=print,
) -> list[dict]:
    """Run the layer benchmark; returns one dict per (shape, mode, impl) with median/min ms."""
    md = _import_dispatch()
    if threads is None:
        threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    tdtype = getattr(torch, dtype)
    tokens = tokens or ([4096] if quick else [2048, 4096, 8192, 16384])
    experts = experts or [8, 32]
    topk = topk or [1, 2]
    reps = reps or (3 if quick else 5)
    results = []
    for E in experts:
        for k in topk:
            cfg, m = _make_experts(hidden, ffn, E, tdtype, device)
            dense = _DenseGated(hidden, k * ffn, tdtype, device)
            for T in tokens:
                g = torch.Generator(device="cpu").manual_seed(T * 131 + E * 7 + k)
                x = torch.randn(T, hidden, generator=g).to(device=device, dtype=tdtype)
                logits = torch.randn(T, E, generator=g)
                w, idx = torch.topk(logits.softmax(-1), k, dim=-1)
                w, idx = w.to(device=device, dtype=tdtype), idx.to(device)
                dy = torch.randn(T, hidden, generator=g).to(device=device, dtype=tdtype)

                def call(impl, mode):
                    if impl == "dense":
                        fn = lambda xx, ww: dense(xx)  # noqa: E731
                    else:
                        cfg._experts_implementation = impl
                        fn = lambda xx, ww: m(xx, idx, ww)  # noqa: E731
                    if mode == "fwd":
                        with torch.no_grad():
                            return fn(x, w)
                    xx = x.detach().requires_grad_(True)
                    ww = w.detach().requires_grad_(True)
                    out = fn(xx, ww)
                    out.backward(dy)
                    return out

                for mode in modes:
                    times = {i: [] for i in impls}
                    errors = {}
                    for i in impls:  # warm-up (and feature check)
                        try:
                            for _ in range(warmup):
                                call(i, mode)
                            _sync(device)
                        except Exception as exc:  # noqa: BLE001 - e.g. grouped_mm dtype limits on CUDA
                            errors[i] = f"{type(exc).__name__}: {str(exc)[:160]}"
                    for _ in range(reps):
                        for i in impls:
                            if i in errors:
                                continue
                            _sync(device)
                            t0 = time.perf_counter()
                            call(i, mode)
                            _sync(device)
                            times[i].append((time.perf_counter() - t0) * 1e3)
                    m.zero_grad(set_to_none=True)
                    dense.zero_grad(set_to_none=True)
                    base = {"tokens": T, "experts": E, "topk": k, "hidden": hidden, "ffn": ffn,
                            "dtype": dtype, "device": device, "mode": mode, "reps": reps, "threads": threads}
                    for i in impls:
                        r = dict(base, impl=i)
                        if i in errors:
                            r.update(error=errors[i], median_ms=None, min_ms=None)
                        else:
                            r.update(median_ms=statistics.median(times[i]), min_ms=min(times[i]))
                        results.append(r)
                    line = "  ".join(
                        f"{i}={r['median_ms']:.1f}" if r["median_ms"] is not None else f"{i}=ERR"
                        for i, r in zip(impls, results[-len(impls):])
                    )
                    log(f"T={T:5d} E={E:2d} k={k} {mode:6s} {line}  (ms, median of {reps})")
    _ = md  # dispatch module imported => "dropless" registered
    return results


def summarize(results: list[dict]) -> list[dict]:
    """One row per (shape, mode): medians and the ratios the issue's targets are stated in."""
    rows = {}
    for r in results:
        key = (r["tokens"], r["experts"], r["topk"], r["mode"])
        rows.setdefault(key, {})[r["impl"]] = r["median_ms"]
    out = []
    for (T, E, k, mode), d in sorted(rows.items(), key=lambda kv: (kv[0][3], kv[0][1], kv[0][2], kv[0][0])):
        row = {"tokens": T, "experts": E, "topk": k, "mode": mode, **{f"{i}_ms": d.get(i) for i in IMPLS}}
        base = [d[i] for i in ("eager", "grouped_mm") if d.get(i) is not None]
        if d.get("dropless") and base:
            row["speedup_vs_best_hf"] = min(base) / d["dropless"]
        if d.get("dropless") and d.get("dense"):
            row["ratio_vs_dense"] = d["dropless"] / d["dense"]
        out.append(row)
    return out


def markdown(results: list[dict], info: dict) -> str:
    lines = ["Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), ""]
    lines.append("| mode | E | k | tokens | eager ms | grouped_mm ms | dropless ms | dense-floor ms | speedup vs best HF | dropless/dense |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    f = lambda v: "err" if v is None else f"{v:.1f}"  # noqa: E731
    for r in summarize(results):
        lines.append(
            f"| {r['mode']} | {r['experts']} | {r['topk']} | {r['tokens']} | {f(r['eager_ms'])} | {f(r['grouped_mm_ms'])} | "
            f"{f(r['dropless_ms'])} | {f(r['dense_ms'])} | "
            f"{r.get('speedup_vs_best_hf', float('nan')):.2f}x | {r.get('ratio_vs_dense', float('nan')):.2f}x |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: str, title: str = "") -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    combos = sorted({(r["experts"], r["topk"]) for r in results})
    modes = [m for m in ("fwd", "fwdbwd") if any(r["mode"] == m for r in results)]
    fig, axes = plt.subplots(len(modes), len(combos), figsize=(4 * len(combos), 3.4 * len(modes)), squeeze=False)
    for mi, mode in enumerate(modes):
        for ci, (E, k) in enumerate(combos):
            ax = axes[mi][ci]
            for impl in IMPLS:
                pts = sorted(
                    (r["tokens"], r["median_ms"]) for r in results
                    if r["mode"] == mode and r["experts"] == E and r["topk"] == k and r["impl"] == impl
                    and r["median_ms"] is not None
                )
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl,
                            linestyle="--" if impl == "dense" else "-")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{mode}  E={E} top-{k}", fontsize=9)
            ax.set_xlabel("tokens")
            ax.set_ylabel("ms (median)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4096 tokens only, 3 reps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--tokens", type=int, nargs="*")
    p.add_argument("--experts", type=int, nargs="*")
    p.add_argument("--topk", type=int, nargs="*")
    p.add_argument("--reps", type=int)
    p.add_argument("--modes", nargs="*", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--threads", type=int)
    p.add_argument("--json", dest="json_out")
    p.add_argument("--png")
    p.add_argument("--md")
    a = p.parse_args(argv)
    info = machine_info(a.device)
    print(json.dumps(info))
    res = run_benchmark(quick=a.quick, device=a.device, dtype=a.dtype, tokens=a.tokens, experts=a.experts,
                        topk=a.topk, reps=a.reps, threads=a.threads, modes=tuple(a.modes))
    info["torch_threads"] = torch.get_num_threads()
    md_text = markdown(res, info)
    print(md_text)
    if a.json_out:
        pathlib.Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.json_out, "w") as fh:
            json.dump({"machine": info, "results": res, "summary": summarize(res)}, fh, indent=1)
    if a.md:
        pathlib.Path(a.md).write_text(md_text)
    if a.png:
        plot(res, a.png, title=f"{info.get('gpu') or info['cpu_model']} | torch {info['torch']} | {a.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
