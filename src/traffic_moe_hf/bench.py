"""``traffic-moe bench``: efficiency of Traffic-MoE against dense traffic models, measured side by side.

    traffic-moe bench [--quick] [--device cpu|cuda] [--dtype float32|bfloat16] --json OUT [--png OUT.png]

Model level (this module): for every model and flow length (128/256/512 tokens) the throughput
(flows/s at the best batch size), the batch-1 latency (p50/p99) and the peak memory (CPU: peak RSS of
a fresh process that only builds and runs that model, and its growth over the process after imports;
GPU: `torch.cuda.max_memory_allocated`). Models:

* ``dense-etbert``: `BertModel` with ET-BERT's shape (12 layers, hidden 768, FFN 3072) — the baseline;
* ``dense-equal-total``: `BertModel` of ET-BERT's depth/width with the FFN widened to Traffic-MoE-base's
  total parameter count;
* ``switch-base``: transformers' own sparse encoder (`SwitchTransformersEncoderModel`: 12 layers,
  d_model 768, every other layer 16 experts of 2048, top-1 with capacity);
* ``traffic-moe-base`` (12 x 768, 16 experts of 1024, top-2) and ``traffic-moe-small`` (4 x 256, 8 experts
  of 512, top-2), with the default experts implementation;
* ``traffic-moe-tiny`` (2 x 64, 4 experts of 64, top-2): the preset behind the accuracy tables of the
  README (real tasks, generalisation, robustness), and ``dense-tiny``, the dense BERT of those tables
  (same width/depth, FFN sized to the MoE's active parameters) — so the efficiency figures can be read
  next to measured accuracy.

Layer level: ``benchmarks/efficiency/bench_layer.py`` (source checkouts), which this command runs too; from an
installed wheel the layer level is reported as not measured and the model level runs as usual.
Every figure of one run comes from the same machine in the same process tree, models interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from .argtypes import HelpFormatter, at_least, output_file

MODELS = ("dense-etbert", "dense-equal-total", "switch-base", "traffic-moe-base", "traffic-moe-small",
          "traffic-moe-tiny", "dense-tiny")
BASELINE = "dense-etbert"


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="efficiency benchmark: Traffic-MoE vs dense and Switch encoders",
                              description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--quick", action="store_true", help="flow length 128 only, fewer repetitions")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="parameter and activation dtype")
    p.add_argument("--models", nargs="*", default=list(MODELS), type=model_spec,
                   help=f"models to measure: {', '.join(MODELS)}; a Traffic-MoE name may end in :IMPL to force an "
                        "experts implementation (e.g. traffic-moe-base:grouped_mm)")
    p.add_argument("--lengths", nargs="*", type=at_least(1), default=None, help="flow lengths in tokens (default 128 256 512)")
    p.add_argument("--no-layer", dest="layer", action="store_false", help="skip the layer-level benchmark")
    p.add_argument("--json", dest="json_out", required=True, type=output_file, help="write every figure, the machine and the configs here")
    p.add_argument("--png", default=None, type=output_file, help="plot of the model-level figures")
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------------------------------ models
IMPLS = ("dropless", "grouped_mm", "eager", "batched_mm")


def model_spec(text: str) -> str:
    """A model name, optionally ``traffic-moe-*:IMPL`` (argparse type)."""
    name, _, impl = text.partition(":")
    if name not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    if impl and (impl not in IMPLS or not name.startswith("traffic-moe")):
        raise argparse.ArgumentTypeError(f"{text!r}: ':IMPL' is for traffic-moe-* models, IMPL one of {', '.join(IMPLS)}")
    return text


def build(name: str):
    """A model by name, in eval mode, and whether it takes Traffic-MoE's structure inputs."""
    from transformers import BertConfig, BertModel, SwitchTransformersConfig, SwitchTransformersEncoderModel

    from . import TrafficMoeConfig, TrafficMoeModel

    if name.startswith("traffic-moe"):
        config = TrafficMoeConfig.from_preset(name.split("-")[-1], max_position_embeddings=520)
        return TrafficMoeModel(config).eval(), True
    if name == "switch-base":
        config = SwitchTransformersConfig(vocab_size=262, d_model=768, d_kv=64, d_ff=2048, num_layers=12,
                                          num_sparse_encoder_layers=6, num_heads=12, num_experts=16,
                                          expert_capacity=64, is_encoder_decoder=False)
        return SwitchTransformersEncoderModel(config).eval(), False
    if name in ("dense-equal-total", "dense-tiny"):
        from .recipes.common import dense_config

        if name == "dense-equal-total":  # ET-BERT's depth and width, FFN widened to Traffic-MoE-base's total size
            config = dense_config(TrafficMoeConfig.from_preset("base"), match="total", max_length=520)
        else:  # the dense baseline of the accuracy tables: tiny's shape, parameters = tiny's active ones
            config = dense_config(TrafficMoeConfig.from_preset("tiny", max_position_embeddings=520), match="active",
                                  max_length=520)
    else:
        config = BertConfig(vocab_size=262, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, max_position_embeddings=520, type_vocab_size=3)
    return BertModel(config, add_pooling_layer=False).eval(), False


def inputs_for(batch: int, length: int, structured: bool, device) -> dict:
    """Random byte flows of `length` tokens, 8 packets' worth of structure for Traffic-MoE."""
    generator = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(6, 262, (batch, length), generator=generator)
    batch_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if structured:
        per_packet = max(1, length // 8)
        batch_inputs["packet_ids"] = (torch.arange(length) // per_packet + 1).clamp(max=32).expand(batch, length).contiguous()
        batch_inputs["direction_ids"] = (batch_inputs["packet_ids"] % 2 + 1)
    return {k: v.to(device) for k, v in batch_inputs.items()}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, length: int, device: str, dtype: str, quick: bool) -> dict:
    """Throughput at the best batch size, batch-1 latency and peak memory of one model at one length."""
    from .hub import count_parameters

    torch.manual_seed(0)
    rss_before = _peak_rss_mb()
    cuda = torch.device(device).type == "cuda"
    base_name, _, impl = name.partition(":")
    with torch.device(device if cuda else "cpu"):  # on a GPU, initialise there (seconds less per model)
        model, structured = build(base_name)
    total = sum(p.numel() for p in model.parameters())
    active = count_parameters(model)[1] if structured else total
    model = model.to(device=device, dtype=getattr(torch, dtype))
    if structured:  # the path the library picks for this device and dtype, unless the name forces one
        from .moe_dispatch import default_experts_implementation

        model.set_experts_implementation(impl or default_experts_implementation(device, getattr(torch, dtype)))
    batches = (1, 8, 32, 128, 512) if cuda else (1, 8, 32)
    reps = 3 if quick else (10 if cuda else 5)
    result = {"model": name, "length": length, "parameters_total": total, "parameters_active": active,
              "experts_implementation": getattr(model.config, "_experts_implementation", None) if structured else None}
    with torch.inference_mode():
        latencies = []
        one = inputs_for(1, length, structured, device)
        for _ in range(2):
            model(**one)
        for _ in range(reps * (4 if cuda else 2)):
            _sync(device)
            t = time.perf_counter()
            model(**one)
            _sync(device)
            latencies.append(time.perf_counter() - t)
        latencies.sort()
        result["latency_p50_ms"] = 1000 * latencies[len(latencies) // 2]
        result["latency_p99_ms"] = 1000 * latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
        throughput = {}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for batch in batches:
            x = inputs_for(batch, length, structured, device)
            model(**x)
            times = []
            for _ in range(reps):
                _sync(device)
                t = time.perf_counter()
                model(**x)
                _sync(device)
                times.append(time.perf_counter() - t)
            throughput[batch] = batch / sorted(times)[len(times) // 2]
        best = max(throughput, key=throughput.get)
        result["throughput_flows_per_s"] = throughput[best]
        result["best_batch"] = best
        result["throughput_by_batch"] = throughput
        if cuda:
            result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        else:
            result["peak_memory_mb"] = _peak_rss_mb()
            result["peak_memory_growth_mb"] = _peak_rss_mb() - rss_before
    return result


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_in_fresh_process(name, length, device, dtype, quick) -> dict:
    """CPU peak RSS only means something per model, so each measurement gets its own process."""
    command = [sys.executable, "-m", "traffic_moe_hf.bench", "--worker", name, str(length), device, dtype, str(int(quick))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"bench worker {name}@{length} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- run
def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    import transformers

    info["transformers"] = transformers.__version__
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def ratios(results: list[dict]) -> list[dict]:
    """Each model against the ET-BERT-shaped dense baseline at the same length."""
    base = {r["length"]: r for r in results if r["model"] == BASELINE}
    out = []
    for r in results:
        b = base.get(r["length"])
        if b is None or r["model"] == BASELINE:
            continue
        out.append({
            "model": r["model"], "length": r["length"],
            "throughput_x": r["throughput_flows_per_s"] / b["throughput_flows_per_s"],
            "latency_p50_x": r["latency_p50_ms"] / b["latency_p50_ms"],
            "peak_memory_x": r["peak_memory_mb"] / b["peak_memory_mb"],
        })
    return out


def markdown(report: dict) -> str:
    lines = [f"machine: {report['machine']}", "",
             "| model | length | params total | active | flows/s (best batch) | p50 ms | p99 ms | peak MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["models"]:
        lines.append(f"| {r['model']} | {r['length']} | {r['parameters_total'] / 1e6:.1f}M | {r['parameters_active'] / 1e6:.1f}M | "
                     f"{r['throughput_flows_per_s']:.1f} ({r['best_batch']}) | {r['latency_p50_ms']:.2f} | "
                     f"{r['latency_p99_ms']:.2f} | {r['peak_memory_mb']:.0f} |")
    lines += ["", f"against `{BASELINE}` at the same length (targets: throughput >= 2.0x, latency <= 0.5x, memory <= 0.6x):", "",
              "| model | length | throughput x | latency x | peak memory x |", "|---|---:|---:|---:|---:|"]
    for r in report["ratios"]:
        lines.append(f"| {r['model']} | {r['length']} | {r['throughput_x']:.2f} | {r['latency_p50_x']:.2f} | {r['peak_memory_x']:.2f} |")
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    lengths = sorted({r["length"] for r in report["models"]})
    names = list(dict.fromkeys(r["model"] for r in report["models"]))
    width = 0.8 / max(1, len(names))
    for k, (metric, title) in enumerate([("throughput_flows_per_s", "throughput, flows/s (log)"),
                                         ("latency_p50_ms", "batch-1 latency p50, ms (log)"),
                                         ("peak_memory_mb", "peak memory, MB")]):
        ax = axes[k]
        for i, name in enumerate(names):
            values = [next((r[metric] for r in report["models"] if r["model"] == name and r["length"] == L), 0) for L in lengths]
            ax.bar([j + i * width for j in range(len(lengths))], values, width, label=name)
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(lengths))], [f"{L} tok" for L in lengths])
        ax.set_title(title)
        if k < 2:
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(report["machine"].get("gpu") or report["machine"].get("cpu", ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench(models=MODELS, lengths=None, device="cpu", dtype="float32", quick=False, layer=True) -> dict:
    lengths = lengths or ([128] if quick else [128, 256, 512])
    cuda = torch.device(device).type == "cuda"
    results = []
    for length in lengths:
        for name in models:
            print(f"bench {name} @ {length} tokens ...", file=sys.stderr, flush=True)  # the command's progress line
            results.append(measure(name, length, device, dtype, quick) if cuda
                           else measure_in_fresh_process(name, length, device, dtype, quick))
    report = {"machine": machine(device), "device": device, "dtype": dtype, "models": results, "ratios": ratios(results)}
    layer_script = Path(__file__).resolve().parents[2] / "benchmarks" / "efficiency" / "bench_layer.py"
    if layer and layer_script.is_file():
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_layer", layer_script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        kwargs = dict(device=device, dtype=dtype)
        if quick:
            kwargs.update(tokens=[4096], reps=3)
        report["layer"] = module.run_benchmark(**kwargs)
    elif layer:
        report["layer"] = "not measured (benchmarks/efficiency/bench_layer.py is in source checkouts only)"
    return report


def run(args) -> int:
    report = bench(args.models, args.lengths, args.device, args.dtype, args.quick, args.layer)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(report, indent=2, default=str))
    if args.png:
        plot(report, args.png)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        name, length, device, dtype, quick = sys.argv[2:7]
        print(json.dumps(measure(name, int(length), device, dtype, bool(int(quick)))))
    else:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        add_parser(sub)
        sys.exit(run(parser.parse_args(["bench", *sys.argv[1:]])))
