"""Dropless sparse-MoE expert dispatch ("dropless" experts implementation).

Shipped as remote code inside checkpoints: this file imports only ``torch``,
``transformers`` and its sibling ``moe_triton`` (which imports ``triton`` lazily,
and only when CUDA is available).

The experts module follows transformers' fused 3-D layout (see
``transformers.integrations.moe``): ``gate_up_proj`` ``[E, 2*I, H]`` (gate rows
first), ``down_proj`` ``[E, H, I]``, ``act_fn`` and ``_apply_gate``; forward is
``(hidden_states [T, H], top_k_index [T, k], top_k_weights [T, k]) -> [T, H]``.

Algorithm (no Python loop over experts, no host synchronisation, static shapes):

1. one stable sort of the ``T*k`` token-expert pairs by expert id;
2. segment ends per expert with ``searchsorted`` on the sorted ids (device-side);
3. one gather of the routed rows;
4. two grouped matrix products over the contiguous expert segments, through the
   opaque custom op ``traffic_moe::gmm`` (``torch._grouped_mm``'s CPU kernel
   where it accepts the operands, else a per-segment ``mm`` loop *inside* the
   op, where reading the offsets of a CPU tensor costs no device sync); the op
   has a registered backward (data and weight gradients are grouped products as
   well), so ``torch.compile(fullgraph=True)`` sees one node per product;
5. the routing weights applied to the down-projection rows and one
   ``index_add_`` back to token order (fp32 accumulation for bf16/fp16).

On CUDA with Triton available, the forward is routed to ``moe_triton`` instead:
gather fused into the up-projection GEMM, scatter fused into the down-projection
GEMM, no atomics.

Importing this module registers three implementations in
``transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS``:

* ``"dropless"``: the dispatch above;
* ``"static"``: every expert on every token, weighted by its routing weight (zero where the token is
  not routed to it): no data-dependent shape or control flow, so ``torch.jit.trace``,
  ``torch.export`` and ONNX record it exactly (``num_experts / top_k`` times the expert FLOPs);
* ``"auto"`` (the model's default): at every forward, the implementation
  ``default_experts_implementation`` names for the device and dtype the hidden states are on, and
  ``"static"`` while the model is being traced or exported.
"""

from __future__ import annotations

import torch
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

try:
    from transformers.integrations.moe import grouped_mm_experts_forward as _hf_grouped_mm
except ImportError:  # pragma: no cover - a transformers without it
    _hf_grouped_mm = None

try:  # package import (and transformers' remote-code module layout)
    # `from .moe_triton import ...`, not `from . import moe_triton`: transformers copies a remote-code
    # file's siblings by that pattern only, and without the copy the Triton path was silently lost
    from .moe_triton import available as _triton_available  # noqa: F401 - makes the sibling a dependency
    from . import moe_triton as _moe_triton
except ImportError:  # pragma: no cover - file imported as a top-level module
    try:
        import moe_triton as _moe_triton
    except ImportError:
        _moe_triton = None


__all__ = [
    "AUTO",
    "DROPLESS",
    "STATIC",
    "auto_experts_forward",
    "default_experts_implementation",
    "dropless_experts_forward",
    "exporting",
    "grouped_mm",
    "register",
    "route",
    "static_experts_forward",
]

DROPLESS = "dropless"
STATIC = "static"
AUTO = "auto"

# Set to False to force the portable path on CUDA (used by tests / benchmarks).
USE_TRITON = True
# Set to False to use the differentiable Triton path for inference too (benchmarks compare the two).
USE_FUSED_INFERENCE = True


# ---------------------------------------------------------------------------
# grouped matmul custom op (portable path)
# ---------------------------------------------------------------------------
def _aligned(t: torch.Tensor) -> bool:
    es = t.element_size()
    if t.data_ptr() % 16:
        return False
    return all((s * es) % 16 == 0 for s, n in zip(t.stride(), t.shape) if s != 1 and n > 1)


def _gmm_impl(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, trans: bool) -> torch.Tensor:
    """out[s] = x[s] @ (w[e].T if trans else w[e]) for rows s of expert e's segment.

    Rows at or after ``offs[-1]`` are zero.
    """
    wm = w.transpose(1, 2) if trans else w  # [E, K, N]
    n_rows = x.size(0)
    n_out = wm.size(2)
    if n_rows == 0:
        return x.new_zeros(0, n_out)
    gmm = getattr(torch, "_grouped_mm", None)
    if gmm is not None and x.dtype in (torch.float32, torch.bfloat16) and x.device.type == "cpu":
        xc = x.contiguous()
        if _aligned(xc) and _aligned(wm):
            try:
                out = gmm(xc, wm, offs=offs)
                last = int(offs[-1]) if offs.numel() else 0
                if last < n_rows:
                    out[last:].zero_()
                return out
            except (RuntimeError, NotImplementedError):
                pass
    out = x.new_zeros(n_rows, n_out)
    start = 0
    for e, end in enumerate(offs.tolist()):  # inside the opaque op: host-side offsets
        if end > start:
            torch.mm(x[start:end], wm[e], out=out[start:end])
        start = max(start, end)
    return out


def _gmm_wgrad_impl(x: torch.Tensor, g: torch.Tensor, offs: torch.Tensor, trans: bool) -> torch.Tensor:
    """Per-expert sum over its rows: trans -> g_e^T @ x_e  [E, N, K]; else x_e^T @ g_e  [E, K, N]."""
    n_exp = offs.numel()
    a, b = (g, x) if trans else (x, g)  # out[e] = a_e^T @ b_e
    gmm = getattr(torch, "_grouped_mm", None)
    if (
        gmm is not None
        and a.dtype in (torch.float32, torch.bfloat16)
        and a.device.type == "cpu"
        and a.size(0) > 0
        and int(offs[-1]) == a.size(0)
    ):
        at = a.t().contiguous().t()  # column-major a -> a.t() row-major [M, S]
        bc = b.contiguous()
        if _aligned(at.t()) and _aligned(bc):
            try:
                return gmm(at.t(), bc, offs=offs)
            except (RuntimeError, NotImplementedError):
                pass
    out = a.new_zeros(n_exp, a.size(1), b.size(1))
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            torch.mm(a[start:end].t(), b[start:end], out=out[e])
        start = max(start, end)
    return out


def _define_ops() -> None:
    try:
        torch.ops.traffic_moe.gmm  # noqa: B018 - already registered (module imported twice)
        return
    except (AttributeError, RuntimeError):
        pass

    torch.library.custom_op(
        "traffic_moe::gmm",
        _gmm_impl,
        mutates_args=(),
        schema="(Tensor x, Tensor w, Tensor offs, bool trans) -> Tensor",
    )
    torch.library.custom_op(
        "traffic_moe::gmm_wgrad",
        _gmm_wgrad_impl,
        mutates_args=(),
        schema="(Tensor x, Tensor g, Tensor offs, bool trans) -> Tensor",
    )

    @torch.library.register_fake("traffic_moe::gmm")
    def _gmm_fake(x, w, offs, trans):
        return x.new_empty(x.size(0), w.size(1) if trans else w.size(2))

    @torch.library.register_fake("traffic_moe::gmm_wgrad")
    def _gmm_wgrad_fake(x, g, offs, trans):
        if trans:
            return x.new_empty(offs.size(0), g.size(1), x.size(1))
        return x.new_empty(offs.size(0), x.size(1), g.size(1))

    def _setup(ctx, inputs, output):
        x, w, offs, trans = inputs
        ctx.save_for_backward(x, w, offs)
        ctx.trans = trans

    def _backward(ctx, grad):
        x, w, offs = ctx.saved_tensors
        grad = grad.contiguous()
        gx = gw = None
        if ctx.needs_input_grad[0]:
            # y = x @ W^T -> dx = g @ W ; y = x @ W -> dx = g @ W^T
            gx = torch.ops.traffic_moe.gmm(grad, w, offs, not ctx.trans)
        if ctx.needs_input_grad[1]:
            gw = torch.ops.traffic_moe.gmm_wgrad(x, grad, offs, ctx.trans).to(w.dtype)
        return gx, gw, None, None

    torch.library.register_autograd("traffic_moe::gmm", _backward, setup_context=_setup)


_define_ops()


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, trans: bool = True) -> torch.Tensor:
    """Grouped product over contiguous expert segments ending at ``offs`` (int32 ``[E]``).

    ``trans=True``: ``w`` is ``[E, N, K]`` and row ``s`` of segment ``e`` gets ``x[s] @ w[e].T``.
    """
    return torch.ops.traffic_moe.gmm(x, w, offs, trans)


# ---------------------------------------------------------------------------
# routing
# ---------------------------------------------------------------------------
def route(top_k_index: torch.Tensor, num_experts: int):
    """Sort token-expert pairs by expert, all on device, static shapes.

    Returns ``(sorted_expert_ids [S], perm [S], token_of_row [S], seg_end int32 [E])`` where
    ``perm[s]`` is the flat ``t*k + j`` slot of sorted row ``s`` and ``seg_end[e]`` is the end of
    expert ``e``'s segment (ids ``>= num_experts``, e.g. expert-parallel sentinels, sort to the tail
    and fall outside every segment).
    """
    k = top_k_index.size(-1)
    eid = top_k_index.reshape(-1)
    sorted_eid, perm = torch.sort(eid, stable=True)
    bounds = torch.arange(1, num_experts + 1, device=eid.device, dtype=sorted_eid.dtype)
    seg_end = torch.searchsorted(sorted_eid, bounds).to(torch.int32)
    tok = torch.div(perm, k, rounding_mode="floor")
    return sorted_eid, perm, tok, seg_end


# ---------------------------------------------------------------------------
# the experts implementation
# ---------------------------------------------------------------------------
def _triton_ok(hidden_states: torch.Tensor, module) -> bool:
    return (
        USE_TRITON
        and _moe_triton is not None
        and hidden_states.is_cuda
        and _moe_triton.available()
        and not getattr(module, "has_bias", False)
        and not getattr(module, "has_post_expert_norm", False)
        and getattr(module, "is_concatenated", True)
        and hidden_states.dtype in (torch.float32, torch.bfloat16, torch.float16)
    )


def _fused_inference(module, hidden_states: torch.Tensor, top_k_weights: torch.Tensor) -> bool:
    """Nothing needs a gradient and nothing is being compiled: the fused (non-differentiable) kernels apply."""
    if not USE_FUSED_INFERENCE or torch.compiler.is_compiling():
        return False
    if torch.is_grad_enabled() and (
        hidden_states.requires_grad or top_k_weights.requires_grad or any(p.requires_grad for p in module.parameters())
    ):
        return False
    return _moe_triton.fused_inference_ok(module)


def dropless_experts_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """Dropless experts forward: one sort, grouped GEMMs over expert segments, one scatter-add."""
    if _triton_ok(hidden_states, self):
        if _fused_inference(self, hidden_states, top_k_weights):
            return _moe_triton.fused_experts_inference(self, hidden_states, top_k_index, top_k_weights)
        if hidden_states.dtype != torch.float32 and _hf_grouped_mm is not None:
            # training in bf16/fp16: transformers' grouped_mm (cuBLAS/CUTLASS grouped GEMM) was as fast or
            # faster than our differentiable Triton kernels on an H200 (benchmarks/efficiency/results/gpu.md)
            return _hf_grouped_mm(self, hidden_states, top_k_index, top_k_weights)
        return _moe_triton.triton_experts_forward(self, hidden_states, top_k_index, top_k_weights)

    has_gate = getattr(self, "has_gate", True)
    has_bias = getattr(self, "has_bias", False)
    trans = not getattr(self, "is_transposed", False)
    w_up = self.gate_up_proj if has_gate else self.up_proj
    num_experts = w_up.size(0)
    num_tokens, hidden_dim = hidden_states.shape
    dtype = hidden_states.dtype

    sorted_eid, perm, tok, seg_end = route(top_k_index, num_experts)
    weights = top_k_weights.reshape(-1).index_select(0, perm)
    if getattr(self, "_is_expert_parallel", False):
        # sentinel pairs sit past seg_end[-1]: their rows come out as zero; keep them off the router grad too
        weights = weights.masked_fill(sorted_eid >= num_experts, 0.0)
        sorted_eid = sorted_eid.clamp(max=num_experts - 1)

    x = hidden_states.index_select(0, tok).to(w_up.dtype)
    h = grouped_mm(x, w_up, seg_end, trans)
    if has_bias:
        h = h + (self.gate_up_proj_bias if has_gate else self.up_proj_bias)[sorted_eid]
    h = apply_gate(self, h) if has_gate else self.act_fn(h)
    y = grouped_mm(h, self.down_proj, seg_end, trans)
    if has_bias:
        y = y + self.down_proj_bias[sorted_eid]
    if getattr(self, "has_post_expert_norm", False):
        y = self.post_expert_norm(y)

    acc = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    y = y.to(acc) * weights.to(acc).unsqueeze(-1)
    out = torch.zeros(num_tokens, hidden_dim, device=hidden_states.device, dtype=acc)
    out = out.index_add(0, tok, y)
    return out.to(dtype)


def apply_gate(module, h: torch.Tensor) -> torch.Tensor:
    """``module._apply_gate`` when the module has it (transformers >= 5.x decorator), else act(gate) * up."""
    fn = getattr(module, "_apply_gate", None)
    if fn is not None:
        return fn(h)
    gate, up = h.chunk(2, dim=-1)
    return module.act_fn(gate) * up


def static_experts_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """Every expert on every token, weighted by the token's routing weight for it (zero where not routed).

    The same sum as the sparse paths, without a data-dependent shape, loop or host read: a tracer
    (``torch.jit.trace``) or exporter (``torch.export``, ``torch.onnx.export``) records exactly what runs
    for every input, where the eager loop over the experts hit by the example and the Triton kernels
    (launched outside the dispatcher) are not recorded faithfully. Costs ``num_experts / top_k`` times the
    routed experts' FLOPs; the loop below is over a Python constant (the number of experts).
    """
    has_gate = getattr(self, "has_gate", True)
    trans = not getattr(self, "is_transposed", False)
    w_up = self.gate_up_proj if has_gate else self.up_proj
    num_experts = w_up.size(0)
    dtype = hidden_states.dtype
    acc = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    # (tokens, experts) routing weights: scatter, so an index tensor never becomes a Python value
    weights = hidden_states.new_zeros(hidden_states.size(0), num_experts, dtype=acc)
    weights = weights.scatter_add(1, top_k_index, top_k_weights.to(acc))
    x = hidden_states.to(w_up.dtype)
    out = torch.zeros(hidden_states.shape, device=hidden_states.device, dtype=acc)
    for e in range(num_experts):
        h = x @ (w_up[e].t() if trans else w_up[e])
        if getattr(self, "has_bias", False):
            h = h + (self.gate_up_proj_bias if has_gate else self.up_proj_bias)[e]
        h = apply_gate(self, h) if has_gate else self.act_fn(h)
        y = h @ (self.down_proj[e].t() if trans else self.down_proj[e])
        if getattr(self, "has_bias", False):
            y = y + self.down_proj_bias[e]
        if getattr(self, "has_post_expert_norm", False):
            y = self.post_expert_norm(y)
        out = out + y.to(acc) * weights[:, e : e + 1]
    return out.to(dtype)


def exporting() -> bool:
    """True while ``torch.jit.trace``, ``torch.export`` or ``torch.onnx.export`` records the model (the ONNX
    exporter records through ``torch.export``, or ``torch.jit.trace`` with ``dynamo=False``)."""
    if torch.jit.is_tracing():
        return True
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting is not None and is_exporting())


def auto_experts_forward(
    self: torch.nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """The model's default: chosen at every forward by the device and dtype the hidden states are on
    (a model loaded on the CPU and moved to CUDA in bf16 gets that pair's default, not the CPU's), and
    ``"static"`` while being traced or exported."""
    name = STATIC if exporting() else default_experts_implementation(hidden_states.device, hidden_states.dtype)
    return ALL_EXPERTS_FUNCTIONS[name](self, hidden_states, top_k_index, top_k_weights)


def register(name: str = DROPLESS) -> None:
    """(Re-)register the implementations in transformers' experts interface (``name``: the dropless one's)."""
    ALL_EXPERTS_FUNCTIONS.register(name, dropless_experts_forward)
    ALL_EXPERTS_FUNCTIONS.register(STATIC, static_experts_forward)
    ALL_EXPERTS_FUNCTIONS.register(AUTO, auto_experts_forward)


def default_experts_implementation(device=None, dtype=None) -> str:
    """The experts implementation the model should default to on ``device`` (and ``dtype``).

    From the layer benchmark (benchmarks/efficiency/results/cpu.md, benchmarks/efficiency/results/gpu.md):
    * CPU: "dropless" (grouped-GEMM path; no host sync, compiles with fullgraph=True);
    * CUDA, fp32, triton importable: "dropless" (fused Triton kernels for inference, its differentiable
      Triton kernels for training; both checked against eager on an H200);
    * CUDA, bf16/fp16 (or dtype unknown): transformers' "grouped_mm". "dropless" inference was
      1.35-1.62x faster than it in bf16 on an H200, but its bf16 numerics have not been checked on
      a GPU yet (the check timed out in that session), so it is opt-in there:
      ``model.set_experts_implementation("dropless")``.
    """
    if device is None:
        return DROPLESS
    dev = torch.device(device)
    if dev.type != "cuda":
        return DROPLESS
    if dtype == torch.float32 and _moe_triton is not None and _moe_triton.available():
        return DROPLESS
    return "grouped_mm"


register()
