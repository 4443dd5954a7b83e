"""White-box attacks (issue 6, item 2).

* :func:`hotflip` — gradient-guided choice of the bytes an attack inserted (padding before the
  payload, chaff payload): HotFlip over the 256-byte vocabulary. The first-order gain of replacing
  byte token ``x_t`` by byte ``v`` is ``(E[v] - E[x_t]) · ∂L/∂e_t``; each step flips, per flow, the
  ``flips`` best (position, byte) pairs among the *editable* bytes only, so headers, lengths and the
  real payload stay as the shaping attack left them. The byte budget is the attack's: e.g. padding
  ``B`` bytes per data packet lets the attacker choose those B bytes (the model sees at most the
  first ``max_bytes`` bytes of each packet). The result is real packets (bytes written back).
* :func:`pgd_eval` — embedding-space PGD (every byte token's embedding moved within an L2 ball of
  ``eps`` × the mean byte-embedding norm). No packet corresponds to such inputs: it is an upper bound
  on what any byte-level attack of that size could do, not a traffic attack.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .adversarial import byte_token_mask, embedding_pgd

__all__ = ["batch_inputs", "editable_token_mask", "hotflip", "predict", "pgd_eval", "whitebox_columns"]

BYTE_OFFSET = 6


def batch_inputs(cols: dict, index, dense: bool) -> dict:
    """A padded batch (tensors) of rows ``index`` of column lists, in the model's input names."""
    from ..tokenization_traffic_moe import TrafficTokenizer

    tok = TrafficTokenizer()
    feats = [{k: cols[k][i] for k in ("input_ids", "attention_mask", "packet_ids", "direction_ids")} for i in index]
    batch = dict(tok.pad(feats, padding=True, return_tensors="pt"))
    if dense:
        batch["token_type_ids"] = batch.pop("direction_ids")
        batch.pop("packet_ids")
    return batch


def editable_token_mask(packets: list, editable: list, tokenizer, length: int) -> np.ndarray:
    """Boolean mask over one flow's tokens ([CLS], then [PKT] + bytes per packet) of editable bytes;
    byte ``j`` of a packet is at the token ``tokenizer.token_byte_indices`` puts it (header layout)."""
    mask = np.zeros(length, dtype=bool)
    pos = 1
    for p, ranges in zip(packets[: tokenizer.max_packets], editable[: tokenizer.max_packets]):
        index = tokenizer.token_byte_indices(p)
        for t, j in enumerate(index):
            if any(s <= j < e for s, e in ranges) and pos + 1 + t < length:
                mask[pos + 1 + t] = True
        pos += len(index) + 1
    return mask


def _forward(model, batch, embeds):
    rest = {k: v for k, v in batch.items() if k != "input_ids"}
    return model(inputs_embeds=embeds, **rest).logits.float()


def hotflip(model, batch: dict, labels: torch.Tensor, editable: torch.Tensor, steps: int = 8, flips: int = 8) -> torch.Tensor:
    """New ``input_ids`` with the editable byte tokens chosen to raise the loss of ``labels``."""
    emb = model.get_input_embeddings()
    W = emb.weight.detach()[BYTE_OFFSET : BYTE_OFFSET + 256]  # [256, H]
    ids = batch["input_ids"].clone()
    editable = editable.bool()
    if not editable.any():
        return ids
    for _ in range(steps):
        e = emb(ids).detach().requires_grad_(True)
        loss = F.cross_entropy(_forward(model, {**batch, "input_ids": ids}, e), labels, reduction="sum")
        (g,) = torch.autograd.grad(loss, e)
        with torch.no_grad():
            gain = torch.einsum("bth,vh->btv", g, W) - (g * e).sum(-1, keepdim=True)  # [B, T, 256]
            gain = gain.masked_fill(~editable.unsqueeze(-1), float("-inf"))
            best_gain, best_byte = gain.max(-1)  # [B, T]
            k = min(flips, ids.shape[1])
            top_gain, top_pos = best_gain.topk(k, dim=-1)
            for b in range(ids.shape[0]):
                for gval, t in zip(top_gain[b].tolist(), top_pos[b].tolist()):
                    if gval > 0 and np.isfinite(gval):
                        ids[b, t] = BYTE_OFFSET + int(best_byte[b, t])
    return ids


def whitebox_columns(model, cols: dict, labels: np.ndarray, dense: bool, tokenizer, steps: int = 8, flips: int = 8,
                     batch_size: int = 32) -> dict:
    """HotFlip applied to flows shaped by an attack (``cols`` from ``attack_columns`` with the same
    ``tokenizer``, with ``editable``). Returns the columns with ``input_ids`` and ``packets`` holding
    the chosen bytes."""
    model.eval()
    out_ids = [list(x) for x in cols["input_ids"]]
    packets = [list(p) for p in cols["packets"]]
    for start in range(0, len(out_ids), batch_size):
        index = list(range(start, min(start + batch_size, len(out_ids))))
        batch = batch_inputs(cols, index, dense)
        T = batch["input_ids"].shape[1]
        mask = torch.tensor(np.stack([editable_token_mask(cols["packets"][i], cols["editable"][i], tokenizer, T)
                                      for i in index]))
        y = torch.as_tensor(labels[index], dtype=torch.long)
        new = hotflip(model, batch, y, mask, steps=steps, flips=flips)
        for j, i in enumerate(index):
            n = len(out_ids[i])
            out_ids[i] = new[j, :n].tolist()
            pos = 1  # write the chosen bytes back into the packets, where the layout took them from
            for p_i, p in enumerate(packets[i][: tokenizer.max_packets]):
                where = tokenizer.token_byte_indices(p)
                data = bytearray(p)
                for t, b in enumerate(where):
                    data[b] = out_ids[i][pos + 1 + t] - BYTE_OFFSET
                packets[i][p_i] = bytes(data)
                pos += len(where) + 1
    return {**cols, "input_ids": out_ids, "packets": packets}


@torch.inference_mode()
def predict(model, cols: dict, dense: bool, batch_size: int = 64) -> np.ndarray:
    logits = np.zeros((len(cols["input_ids"]), model.config.num_labels), dtype=np.float32)
    for start in range(0, len(logits), batch_size):
        index = list(range(start, min(start + batch_size, len(logits))))
        logits[index] = model(**batch_inputs(cols, index, dense)).logits.float().cpu().numpy()
    return logits


def pgd_eval(model, cols: dict, labels: np.ndarray, dense: bool, eps: float, steps: int = 10,
             batch_size: int = 32) -> np.ndarray:
    """Logits under embedding-space PGD of radius ``eps`` (fraction of the mean byte-embedding norm)."""
    model.eval()
    logits = np.zeros((len(cols["input_ids"]), model.config.num_labels), dtype=np.float32)
    gen = torch.Generator().manual_seed(0)
    for start in range(0, len(logits), batch_size):
        index = list(range(start, min(start + batch_size, len(logits))))
        batch = batch_inputs(cols, index, dense)
        y = torch.as_tensor(labels[index], dtype=torch.long)
        delta = embedding_pgd(model, batch, y, eps, steps=steps, random_start=False, generator=gen)
        with torch.no_grad():
            e = model.get_input_embeddings()(batch["input_ids"]) + delta
            logits[index] = _forward(model, batch, e).cpu().numpy()
    return logits


def confidence(model, cols: dict, labels: np.ndarray, dense: bool) -> np.ndarray:
    """Probability the model gives the true class, per flow."""
    logits = torch.from_numpy(predict(model, cols, dense))
    return logits.softmax(-1)[torch.arange(len(labels)), torch.as_tensor(labels)].numpy()


_ = byte_token_mask  # re-exported for callers that build their own masks
