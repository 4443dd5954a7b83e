"""Embedding-space adversarial training for ``traffic-moe finetune --adversarial`` (issue 6, item 3) and the
PGD step the white-box check shares with it.

:func:`adversarial_trainer` makes a `Trainer` subclass whose loss is ``(1 - weight) * clean + weight *
adversarial``; the adversarial loss is taken at a PGD perturbation (``steps`` ascent steps, FreeLB-style
random start) of the byte embeddings of every byte token, each token's perturbation bounded in L2 by ``eps``
× the mean byte-embedding norm. The shaping augmentation (transforms of prepared flows, no model) is
:mod:`traffic_moe_hf.shaping.augment`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["adversarial_trainer", "embedding_pgd", "byte_token_mask"]


def byte_token_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """1.0 where the token is a byte (ids 6..261) of a real position; 0.0 for special tokens/padding."""
    mask = (input_ids >= 6) & (input_ids < 262)
    if attention_mask is not None:
        mask &= attention_mask.bool()
    return mask.unsqueeze(-1).float()


def _model_inputs(inputs: dict) -> dict:
    return {k: v for k, v in inputs.items() if k not in ("input_ids", "labels")}


def embedding_pgd(model, inputs: dict, labels: torch.Tensor, eps: float, steps: int = 3, alpha: float | None = None,
                  random_start: bool = True, loss_fn=None, generator=None) -> torch.Tensor:
    """A PGD perturbation (same shape as the input embeddings, zero on special tokens) that raises
    the classification loss; per-token L2 norm at most ``eps`` × mean byte-embedding norm."""
    emb = model.get_input_embeddings()
    ids = inputs["input_ids"]
    mask = byte_token_mask(ids, inputs.get("attention_mask"))
    with torch.no_grad():
        base = emb(ids)
        scale = emb.weight[6:262].norm(dim=-1).mean()
    radius = eps * scale
    alpha = radius / max(steps, 1) * 2.0 if alpha is None else alpha * scale
    if random_start:
        delta = torch.randn(base.shape, generator=generator, device=base.device, dtype=base.dtype)
        delta = delta / delta.norm(dim=-1, keepdim=True).clamp(min=1e-12) * radius * 0.5
    else:
        delta = torch.zeros_like(base)
    delta = delta * mask
    rest = _model_inputs(inputs)
    for _ in range(steps):
        delta.requires_grad_(True)
        out = model(inputs_embeds=base + delta, **rest)
        loss = loss_fn(out, labels) if loss_fn is not None else F.cross_entropy(out.logits.float(), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + alpha * grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            norm = delta.norm(dim=-1, keepdim=True)
            delta = delta * (radius / norm.clamp(min=1e-12)).clamp(max=1.0) * mask
    return delta.detach()


def adversarial_trainer(base_cls, eps: float = 0.3, steps: int = 1, weight: float = 0.5):
    """A subclass of ``base_cls`` (`transformers.Trainer`) that adds the embedding-PGD loss."""

    class AdversarialTrainer(base_cls):
        adv_eps, adv_steps, adv_weight = eps, steps, weight

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            clean_inputs = dict(inputs)
            loss, outputs = super().compute_loss(model, dict(inputs), return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
            if model.training and self.adv_eps > 0 and self.adv_weight > 0 and "labels" in clean_inputs:
                labels = clean_inputs["labels"]
                delta = embedding_pgd(model, clean_inputs, labels, self.adv_eps, self.adv_steps)
                emb = model.get_input_embeddings()
                out = model(inputs_embeds=emb(clean_inputs["input_ids"]) + delta, **_model_inputs(clean_inputs))
                if self.compute_loss_func is not None:
                    adv = self.compute_loss_func(out, labels, num_items_in_batch=num_items_in_batch)
                else:
                    adv = F.cross_entropy(out.logits.float(), labels)
                loss = (1 - self.adv_weight) * loss + self.adv_weight * adv
            return (loss, outputs) if return_outputs else loss

    return AdversarialTrainer
