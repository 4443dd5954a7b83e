"""Sparse upcycling: a Traffic-MoE checkpoint with more experts per layer, made from a trained one, for continued
pretraining (``traffic-moe pretrain --from OUT``). The question it serves is the paper's: does capacity pay when
each token's compute stays the same? Every token still reaches ``num_experts_per_tok`` experts of the same width,
so the active parameters (and the cost per token) are the source's; the total grows with the experts.

    .venv/bin/python benchmarks/foundation/upcycle.py --from traffic-moe-mini --experts 16 --out WORK/up16

Expert ``e`` of the new layer starts as a copy of expert ``e mod E`` of the source (E its expert count), and its
router row as that expert's row plus a little noise (``--noise``, relative to the row's norm) so that the copies'
logits differ and training can tell them apart. The function is not kept exactly: two copies of one expert now
tie for a token's top-2, so at first a token's second expert is the first one's copy rather than the source's second
choice (sparse upcycling, Komatsuzaki et al. 2022, starts from a dense FFN and pays the same kind of restart).
Everything else (embeddings, attention, norms, the masked-LM head) is copied unchanged.
"""

from __future__ import annotations

import argparse

import torch


def upcycle(source: str, experts: int, out: str, noise: float = 0.01, seed: int = 0) -> dict:
    from traffic_moe_hf import TrafficMoeConfig, TrafficMoeForMaskedLM, TrafficTokenizer
    from traffic_moe_hf.recipes.common import parameter_summary, pretrained_folder

    path = pretrained_folder(source)  # a folder or a shipped short name, never a Hub download
    old = TrafficMoeForMaskedLM.from_pretrained(path)
    before = old.config.num_experts
    if experts <= before or experts % before:
        raise SystemExit(f"upcycle.py: --experts {experts} must be a multiple of {path}'s {before} experts, larger")
    config = TrafficMoeConfig.from_dict({**old.config.to_dict(), "num_experts": experts})
    new = TrafficMoeForMaskedLM(config)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in old.state_dict().items():
        if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            tensor = tensor.repeat(experts // before, 1, 1)
        elif name.endswith("gate.weight"):  # the router: one row per expert
            rows = tensor.repeat(experts // before, 1)
            scale = noise * rows.norm(dim=-1, keepdim=True) / rows.shape[-1] ** 0.5
            tensor = rows + scale * torch.randn(rows.shape, generator=generator)
        state[name] = tensor
    missing, unexpected = new.load_state_dict(state, strict=False)
    if [m for m in missing if not m.endswith("decoder.weight")] or unexpected:  # the decoder is tied to the embeddings
        raise SystemExit(f"upcycle.py: weights that do not fit: missing {missing}, unexpected {unexpected}")
    new.tie_weights()
    new.save_pretrained(out)
    TrafficTokenizer.from_pretrained(path).save_pretrained(out)
    return {"source": str(path), "experts": [before, experts], "old": parameter_summary(old),
            "new": parameter_summary(new)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="source", default="traffic-moe-mini")
    ap.add_argument("--experts", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from traffic_moe_hf.errors import TrafficMoeError

    try:
        print(upcycle(a.source, a.experts, a.out, a.noise, a.seed))
    except TrafficMoeError as e:  # e.g. a folder without config.json, a short name whose folder is not there
        raise SystemExit(f"upcycle.py: {e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
