"""Expert load: how many (token, slot) assignments each expert of each MoE layer receives.

Collected with forward hooks on the routers (the model code stays free of bookkeeping), logged by a
`TrainerCallback` during training, plotted by `traffic-moe evaluate`.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from ..modeling_traffic_moe import TrafficMoeRouter


class ExpertLoadMonitor:
    """Counts router assignments of real (non-padding) tokens per layer while attached."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.routers = [(name, m) for name, m in model.named_modules() if isinstance(m, TrafficMoeRouter)]
        self.counts = {name: torch.zeros(m.weight.shape[0], dtype=torch.long) for name, m in self.routers}
        self.token_mask: torch.Tensor | None = None
        self._handles = []

    def __enter__(self):
        self.attach()
        return self

    def __exit__(self, *exc):
        self.detach()

    def attach(self):
        self._handles.append(self.model.register_forward_pre_hook(self._remember_mask, with_kwargs=True))
        for name, router in self.routers:
            self._handles.append(router.register_forward_hook(self._hook(name)))

    def detach(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _remember_mask(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        self.token_mask = None if mask is None else mask.reshape(-1).bool()

    def _hook(self, name):
        def hook(module, args, output):
            top_k_index = output[2].detach()
            if self.token_mask is not None and self.token_mask.numel() == top_k_index.shape[0]:
                top_k_index = top_k_index[self.token_mask.to(top_k_index.device)]
            self.counts[name] += torch.bincount(top_k_index.reshape(-1).cpu(), minlength=len(self.counts[name]))

        return hook

    def reset(self):
        for counts in self.counts.values():
            counts.zero_()

    def fractions(self) -> dict[str, list[float]]:
        """Per layer, the fraction of assignments each expert got (sums to 1)."""
        return {
            name: (counts.double() / counts.sum().clamp(min=1)).tolist() for name, counts in self.counts.items()
        }

    def summary(self) -> dict[str, float]:
        """Scalars for logs: worst max/mean load ratio over layers (1 = perfectly even) and unused experts."""
        worst, unused = 1.0, 0
        for counts in self.counts.values():
            if counts.sum() == 0:
                continue
            worst = max(worst, (counts.max() / counts.double().mean()).item())
            unused += int((counts == 0).sum())
        return {"expert_load_max_over_mean": worst, "experts_unused": unused}


class ExpertLoadCallback(TrainerCallback):
    """Adds the expert-load summary of the steps since the last log to the Trainer's logs."""

    def __init__(self, model: torch.nn.Module):
        self.monitor = ExpertLoadMonitor(model)
        self.monitor.attach()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in self.monitor.summary().items()}
            logs.update(summary)  # what is printed
            if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
                state.log_history[-1].update(summary)  # what is kept (the Trainer copied logs before callbacks)
            self.monitor.reset()

    def on_train_end(self, args, state, control, **kwargs):
        self.monitor.detach()
