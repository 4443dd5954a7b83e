"""Triton kernels for the dropless MoE dispatch on CUDA (ScatterMoE / MegaBlocks-style).

Shipped as remote code: imports only ``torch`` at top level; ``triton`` is imported lazily
inside ``available()`` (in a ``try``) and only when CUDA is available (or when a caller asks
for the Triton CPU interpreter explicitly, for testing).

Kernels
-------
``_gmm_kernel``   grouped GEMM over the expert segments of the expert-sorted rows, with an
                  optional *gather* on the A rows (``A[a_idx[r]]``: fuses the token gather into
                  the up-projection) and an optional *scatter* on the C rows (``C[c_idx[r]]``:
                  writes the down-projection straight back to ``(token, slot)`` order, so the
                  combine is a deterministic ``view(T, k, H)`` weighted sum, no atomics).
``_wgrad_kernel`` per-expert weight gradient ``sum_r G[g_idx[r]]^T X[x_idx[r]]`` over the
                  expert's segment (one program per expert x output tile, loop over rows).

The block schedule (which expert / which rows each program handles) is computed on device
with ``searchsorted`` over a static upper bound of ``cdiv(S, BM) + E`` row blocks, so nothing
is read back to the host; surplus programs exit at once. Both products are custom ops
(``traffic_moe::tgmm``, ``traffic_moe::tgmm_wgrad``) with registered autograd, so
``torch.compile(fullgraph=True)`` keeps them as opaque nodes.
"""

from __future__ import annotations

import os

import torch

triton = None
tl = None
_kernels = None
_fused: dict = {}
_state = {"tried": False, "ok": False}


def available(allow_interpreter: bool = False) -> bool:
    """True when the Triton kernels can run (CUDA present and ``triton`` importable)."""
    if not (torch.cuda.is_available() or allow_interpreter):
        return False
    if not _state["tried"]:
        _state["tried"] = True
        try:
            _build()
            _define_ops()
            _state["ok"] = True
        except Exception:  # noqa: BLE001 - any import/compile problem means: use the fallback
            _state["ok"] = False
    return _state["ok"]


def _build() -> None:
    # the @triton.jit helpers called from kernels must be module globals (Triton resolves callees there)
    global triton, tl, _kernels, _block_of, _act
    # lazy and optional; inside a `try` so that transformers' remote-code check (`check_imports`, which
    # skips imports in try blocks) does not require triton where the file is only copied, not used
    try:
        import triton as _triton  # noqa: PLC0415
        import triton.language as _tl  # noqa: PLC0415
    except ImportError:
        raise

    triton, tl = _triton, _tl

    @triton.jit
    def _block_of(SEG_END, pid_m, E, E_P2: tl.constexpr, BM: tl.constexpr):
        """(expert, first row, segment end, valid) of row block ``pid_m`` from the segment ends alone."""
        offs_e = tl.arange(0, E_P2)
        emask = offs_e < E
        ends = tl.load(SEG_END + offs_e, mask=emask, other=0)
        starts = tl.load(SEG_END + offs_e - 1, mask=emask & (offs_e > 0), other=0)
        nblk = tl.where(emask, (ends - starts + BM - 1) // BM, 0)
        cum = tl.cumsum(nblk, 0)
        total = tl.sum(nblk, 0)
        e = tl.sum((cum <= pid_m).to(tl.int32), 0)
        sel = offs_e == e
        first = tl.sum(tl.where(sel, cum - nblk, 0), 0)
        start = tl.sum(tl.where(sel, starts, 0), 0)
        end = tl.sum(tl.where(sel, ends, 0), 0)
        return e, start + (pid_m - first) * BM, end, pid_m < total

    @triton.jit
    def _gmm_kernel(
        A, B, C, A_IDX, C_IDX, SEG_END,
        N, K,
        stride_am, stride_ak,
        stride_be, stride_bk, stride_bn,
        stride_cm, stride_cn,
        HAS_A_IDX: tl.constexpr, HAS_C_IDX: tl.constexpr, E, E_P2: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        e, row0, end, valid = _block_of(SEG_END, pid_m, E, E_P2, BM)
        if valid:
            rows = row0 + tl.arange(0, BM)
            rmask = rows < end
            if HAS_A_IDX:
                arows = tl.load(A_IDX + rows, mask=rmask, other=0).to(tl.int64)
            else:
                arows = rows.to(tl.int64)
            offs_n = pid_n * BN + tl.arange(0, BN)
            nmask = offs_n < N
            offs_k = tl.arange(0, BK)
            a_ptrs = A + arows[:, None] * stride_am + offs_k[None, :] * stride_ak
            b_ptrs = B + e.to(tl.int64) * stride_be + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k0 in range(0, K, BK):
                kmask = (k0 + offs_k) < K
                a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
                acc = tl.dot(a, b, acc, input_precision=PREC)
                a_ptrs += BK * stride_ak
                b_ptrs += BK * stride_bk
            if HAS_C_IDX:
                crows = tl.load(C_IDX + rows, mask=rmask, other=0).to(tl.int64)
            else:
                crows = rows.to(tl.int64)
            c_ptrs = C + crows[:, None] * stride_cm + offs_n[None, :] * stride_cn
            tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=rmask[:, None] & nmask[None, :])

    @triton.jit
    def _wgrad_kernel(
        G, X, DW, G_IDX, X_IDX, SEG_END,
        N, K,
        stride_gm, stride_gn,
        stride_xm, stride_xk,
        stride_we, stride_wn, stride_wk,
        HAS_G_IDX: tl.constexpr, HAS_X_IDX: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr,
    ):
        e = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        end = tl.load(SEG_END + e)
        start = tl.load(SEG_END + e - 1, mask=e > 0, other=0)
        offs_n = pid_n * BN + tl.arange(0, BN)
        offs_k = pid_k * BK + tl.arange(0, BK)
        nmask = offs_n < N
        kmask = offs_k < K
        acc = tl.zeros((BN, BK), dtype=tl.float32)
        for r0 in range(start, end, BM):
            rows = r0 + tl.arange(0, BM)
            rmask = rows < end
            if HAS_G_IDX:
                grows = tl.load(G_IDX + rows, mask=rmask, other=0).to(tl.int64)
            else:
                grows = rows.to(tl.int64)
            if HAS_X_IDX:
                xrows = tl.load(X_IDX + rows, mask=rmask, other=0).to(tl.int64)
            else:
                xrows = rows.to(tl.int64)
            g = tl.load(
                G + grows[:, None] * stride_gm + offs_n[None, :] * stride_gn,
                mask=rmask[:, None] & nmask[None, :], other=0.0,
            )
            x = tl.load(
                X + xrows[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                mask=rmask[:, None] & kmask[None, :], other=0.0,
            )
            acc = tl.dot(tl.trans(g), x, acc, input_precision=PREC)
        w_ptrs = DW + e.to(tl.int64) * stride_we + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
        tl.store(w_ptrs, acc.to(DW.dtype.element_ty), mask=nmask[:, None] & kmask[None, :])

    _kernels = (_gmm_kernel, _wgrad_kernel)

    # ---- fused inference kernels (no autograd)
    @triton.jit
    def _act(x, ACT: tl.constexpr):
        if ACT == 0:  # gelu (erf)
            return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
        elif ACT == 1:  # gelu, tanh approximation
            inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            return 0.5 * x * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))
        elif ACT == 2:  # silu
            return x * tl.sigmoid(x)
        else:  # relu
            return tl.maximum(x, 0.0)

    @triton.jit
    def _up_gate_kernel(
        X, W, HOUT, PERM, SEG_END,
        N, K, TOPK, S_BUCKET,
        stride_xm, stride_xk,
        stride_we, stride_wn, stride_wk,
        stride_hm, stride_hn,
        E, E_P2: tl.constexpr, ACT: tl.constexpr, PREC: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        """HOUT[r] = act(X[tok(r)] @ Wg[e]^T) * (X[tok(r)] @ Wu[e]^T), rows r in expert-sorted order."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        e, row0, end, valid = _block_of(SEG_END, pid_m, E, E_P2, BM)
        if valid:
            rows = row0 + tl.arange(0, BM)
            rmask = rows < end
            tok = (tl.load(PERM + rows, mask=rmask, other=0) // TOPK).to(tl.int64)
            offs_n = pid_n * BN + tl.arange(0, BN)
            nmask = offs_n < N
            offs_k = tl.arange(0, BK)
            x_ptrs = X + tok[:, None] * stride_xm + offs_k[None, :] * stride_xk
            wg_ptrs = W + e.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
            wu_ptrs = wg_ptrs + N * stride_wn
            acc_g = tl.zeros((BM, BN), dtype=tl.float32)
            acc_u = tl.zeros((BM, BN), dtype=tl.float32)
            for k0 in range(0, K, BK):
                kmask = (k0 + offs_k) < K
                x = tl.load(x_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
                wmask = kmask[:, None] & nmask[None, :]
                acc_g = tl.dot(x, tl.load(wg_ptrs, mask=wmask, other=0.0), acc_g, input_precision=PREC)
                acc_u = tl.dot(x, tl.load(wu_ptrs, mask=wmask, other=0.0), acc_u, input_precision=PREC)
                x_ptrs += BK * stride_xk
                wg_ptrs += BK * stride_wk
                wu_ptrs += BK * stride_wk
            h = _act(acc_g, ACT) * acc_u
            h_ptrs = HOUT + rows.to(tl.int64)[:, None] * stride_hm + offs_n[None, :] * stride_hn
            tl.store(h_ptrs, h.to(HOUT.dtype.element_ty), mask=rmask[:, None] & nmask[None, :])

    @triton.jit
    def _down_scatter_kernel(
        HIN, W, Y, PERM, WTS, SEG_END,
        N, K, S_BUCKET,
        stride_hm, stride_hk,
        stride_we, stride_wn, stride_wk,
        stride_ym, stride_yn,
        E, E_P2: tl.constexpr, PREC: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    ):
        """Y[slot(r)] = w[slot(r)] * (HIN[r] @ Wd[e]^T): the routing weight and the scatter back to
        (token, slot) order fused into the down projection (no atomics)."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        e, row0, end, valid = _block_of(SEG_END, pid_m, E, E_P2, BM)
        if valid:
            rows = row0 + tl.arange(0, BM)
            rmask = rows < end
            offs_n = pid_n * BN + tl.arange(0, BN)
            nmask = offs_n < N
            offs_k = tl.arange(0, BK)
            h_ptrs = HIN + rows.to(tl.int64)[:, None] * stride_hm + offs_k[None, :] * stride_hk
            w_ptrs = W + e.to(tl.int64) * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k0 in range(0, K, BK):
                kmask = (k0 + offs_k) < K
                a = tl.load(h_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
                b = tl.load(w_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
                acc = tl.dot(a, b, acc, input_precision=PREC)
                h_ptrs += BK * stride_hk
                w_ptrs += BK * stride_wk
            slot = tl.load(PERM + rows, mask=rmask, other=0).to(tl.int64)
            wt = tl.load(WTS + slot, mask=rmask, other=0.0).to(tl.float32)
            acc = acc * wt[:, None]
            y_ptrs = Y + slot[:, None] * stride_ym + offs_n[None, :] * stride_yn
            tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=rmask[:, None] & nmask[None, :])

    _fused["up"] = _autotuned(_up_gate_kernel)
    _fused["down"] = _autotuned(_down_scatter_kernel)


def _fused_configs():
    """Tile candidates for the fused inference kernels: two (each costs a compile on first use per model
    shape); one fixed tile under the CPU interpreter or with ``TRAFFIC_MOE_TRITON_AUTOTUNE=0``."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available():
        return [triton.Config({"BM": 32, "BN": 32, "BK": 32}, num_warps=4, num_stages=1)]
    shapes = [(64, 128, 64, 4, 3), (128, 128, 64, 8, 3)]
    if os.environ.get("TRAFFIC_MOE_TRITON_AUTOTUNE", "1") == "0":
        shapes = shapes[:1]
    return [triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w, num_stages=st) for bm, bn, bk, w, st in shapes]


def _autotuned(kernel):
    """The kernel under ``triton.autotune``, keyed on the GEMM shape and the power-of-two bucket of rows
    (a new bucket, e.g. a new batch size, is tuned once: ~0.1 s with the short timing below)."""
    configs = _fused_configs()
    try:
        return triton.autotune(configs=configs, key=["N", "K", "S_BUCKET"], warmup=5, rep=20)(kernel)
    except TypeError:  # a Triton without the warmup/rep arguments
        return triton.autotune(configs=configs, key=["N", "K", "S_BUCKET"])(kernel)


# ---------------------------------------------------------------------------
# launch helpers
# ---------------------------------------------------------------------------
def _prec(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _tiles(dtype: torch.dtype):
    if dtype == torch.float32:
        return 64, 64, 32, 4, 2  # BM, BN, BK, warps, stages
    return 64, 128, 64, 4, 3


def _bmat_strides(b: torch.Tensor, trans: bool):
    # trans: Bm(e) = b[e].T with b [E, N, K] -> contraction index is dim 2, output dim 1
    if trans:
        return b.stride(0), b.stride(2), b.stride(1), b.size(1), b.size(2)
    return b.stride(0), b.stride(1), b.stride(2), b.size(2), b.size(1)


def _tgmm_impl(a, b, a_idx, c_idx, seg_end, n_out_rows: int, trans: bool):
    gmm_kernel, _ = _kernels
    s_be, s_bk, s_bn, n, k = _bmat_strides(b, trans)
    assert a.size(1) == k, (a.shape, b.shape, trans)
    c = torch.zeros(n_out_rows, n, device=a.device, dtype=a.dtype)
    n_rows = a_idx.numel() if a_idx is not None else (c_idx.numel() if c_idx is not None else a.size(0))
    if n_rows == 0 or n == 0:
        return c
    bm, bn, bk, warps, stages = _tiles(a.dtype)
    n_exp = seg_end.numel()
    # static upper bound on row blocks; each program finds its expert and rows from seg_end, surplus ones exit
    grid = (triton.cdiv(n_rows, bm) + n_exp, triton.cdiv(n, bn))
    gmm_kernel[grid](
        a, b, c,
        a_idx if a_idx is not None else seg_end,
        c_idx if c_idx is not None else seg_end,
        seg_end,
        n, k,
        a.stride(0), a.stride(1),
        s_be, s_bk, s_bn,
        c.stride(0), c.stride(1),
        HAS_A_IDX=a_idx is not None, HAS_C_IDX=c_idx is not None, E=n_exp, E_P2=triton.next_power_of_2(n_exp),
        BM=bm, BN=bn, BK=bk, PREC=_prec(a.dtype),
        num_warps=warps, num_stages=stages,
    )
    return c


def _tgmm_wgrad_impl(a, g, a_idx, c_idx, seg_end, trans: bool):
    """dB for C[c(r)] = A[a(r)] @ Bm(e): returns [E, N, K] if trans else [E, K, N]."""
    _, wgrad_kernel = _kernels
    n_exp = seg_end.numel()
    n, k = g.size(1), a.size(1)
    dw = torch.empty((n_exp, n, k) if trans else (n_exp, k, n), device=a.device, dtype=torch.float32)
    if trans:
        s_we, s_wn, s_wk = dw.stride(0), dw.stride(1), dw.stride(2)
    else:
        s_we, s_wn, s_wk = dw.stride(0), dw.stride(2), dw.stride(1)
    bm, bn, bk = 64, 64, 64
    dummy = seg_end
    grid = (n_exp, triton.cdiv(n, bn), triton.cdiv(k, bk))
    wgrad_kernel[grid](
        g, a, dw,
        c_idx if c_idx is not None else dummy,
        a_idx if a_idx is not None else dummy,
        seg_end,
        n, k,
        g.stride(0), g.stride(1),
        a.stride(0), a.stride(1),
        s_we, s_wn, s_wk,
        HAS_G_IDX=c_idx is not None, HAS_X_IDX=a_idx is not None,
        BM=bm, BN=bn, BK=bk, PREC=_prec(a.dtype),
        num_warps=4, num_stages=2,
    )
    return dw


def _define_ops() -> None:
    try:
        torch.ops.traffic_moe.tgmm  # noqa: B018
        return
    except (AttributeError, RuntimeError):
        pass

    torch.library.custom_op(
        "traffic_moe::tgmm",
        _tgmm_impl,
        mutates_args=(),
        schema="(Tensor a, Tensor b, Tensor? a_idx, Tensor? c_idx, Tensor seg_end, int n_out_rows, bool trans) -> Tensor",
    )
    torch.library.custom_op(
        "traffic_moe::tgmm_wgrad",
        _tgmm_wgrad_impl,
        mutates_args=(),
        schema="(Tensor a, Tensor g, Tensor? a_idx, Tensor? c_idx, Tensor seg_end, bool trans) -> Tensor",
    )

    @torch.library.register_fake("traffic_moe::tgmm")
    def _tgmm_fake(a, b, a_idx, c_idx, seg_end, n_out_rows, trans):
        return a.new_empty(n_out_rows, b.size(1) if trans else b.size(2))

    @torch.library.register_fake("traffic_moe::tgmm_wgrad")
    def _tgmm_wgrad_fake(a, g, a_idx, c_idx, seg_end, trans):
        e = seg_end.size(0)
        shape = (e, g.size(1), a.size(1)) if trans else (e, a.size(1), g.size(1))
        return a.new_empty(shape, dtype=torch.float32)

    def _setup(ctx, inputs, output):
        a, b, a_idx, c_idx, seg_end, n_out_rows, trans = inputs
        ctx.save_for_backward(a, b, a_idx, c_idx, seg_end)
        ctx.trans = trans
        ctx.has_a_idx = a_idx is not None
        ctx.has_c_idx = c_idx is not None

    def _backward(ctx, grad):
        a, b, a_idx, c_idx, seg_end = ctx.saved_tensors
        a_idx = a_idx if ctx.has_a_idx else None
        c_idx = c_idx if ctx.has_c_idx else None
        ga = gb = None
        if ctx.needs_input_grad[0]:
            n_rows = a_idx.numel() if a_idx is not None else a.size(0)
            # dA rows (expert-sorted order) = dC[c(r)] @ Bm(e)^T
            ga_sorted = torch.ops.traffic_moe.tgmm(grad, b, c_idx, None, seg_end, n_rows, not ctx.trans)
            if a_idx is None:
                ga = ga_sorted
            else:
                ga = torch.zeros(a.shape, device=a.device, dtype=torch.float32)
                ga = ga.index_add(0, a_idx, ga_sorted.float()).to(a.dtype)
        if ctx.needs_input_grad[1]:
            gb = torch.ops.traffic_moe.tgmm_wgrad(a, grad, a_idx, c_idx, seg_end, ctx.trans).to(b.dtype)
        return ga, gb, None, None, None, None, None

    torch.library.register_autograd("traffic_moe::tgmm", _backward, setup_context=_setup)


# ---------------------------------------------------------------------------
# experts forward
# ---------------------------------------------------------------------------
def _sort_pairs(top_k_index: torch.Tensor, num_experts: int):
    """``(perm, seg_end)`` from the dispatch's one routing sort, ``moe_dispatch.route`` (imported on use:
    moe_dispatch imports this module, so a top-level import would be circular)."""
    try:
        from .moe_dispatch import route  # noqa: PLC0415
    except ImportError:  # pragma: no cover - file imported as a top-level module
        from moe_dispatch import route  # noqa: PLC0415
    _, perm, _, seg_end = route(top_k_index, num_experts)
    return perm, seg_end


def triton_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """Dropless experts forward with Triton grouped GEMMs (gather and scatter fused)."""
    has_gate = getattr(self, "has_gate", True)
    trans = not getattr(self, "is_transposed", False)
    w_up = self.gate_up_proj if has_gate else self.up_proj
    num_experts = w_up.size(0)
    num_tokens, hidden_dim = hidden_states.shape
    k = top_k_index.size(-1)
    n_pairs = num_tokens * k
    dtype = hidden_states.dtype

    perm, seg_end = _sort_pairs(top_k_index, num_experts)
    tok = torch.div(perm, k, rounding_mode="floor")

    x = hidden_states.to(w_up.dtype)
    h = torch.ops.traffic_moe.tgmm(x, w_up, tok, None, seg_end, n_pairs, trans)  # [S, 2I] expert-sorted
    if has_gate:
        gate_fn = getattr(self, "_apply_gate", None)
        if gate_fn is not None:
            h = gate_fn(h)
        else:
            gate, up = h.chunk(2, dim=-1)
            h = self.act_fn(gate) * up
    else:
        h = self.act_fn(h)
    h = h.to(self.down_proj.dtype)
    y = torch.ops.traffic_moe.tgmm(h, self.down_proj, None, perm, seg_end, n_pairs, trans)  # [S, H] slot order
    w = top_k_weights.reshape(num_tokens, k, 1).float()
    if getattr(self, "_is_expert_parallel", False):
        w = w.masked_fill((top_k_index >= num_experts).unsqueeze(-1), 0.0)
    out = (y.view(num_tokens, k, hidden_dim).float() * w).sum(dim=1)
    return out.to(dtype)


# ---------------------------------------------------------------------------
# fused inference forward (no autograd): 2 GEMM kernels + sort/searchsorted + one sum
# ---------------------------------------------------------------------------
_ACT_CODES = {"gelu": 0, "gelu_tanh": 1, "silu": 2, "relu": 3}
_act_cache: dict = {}


def _act_code(act_fn) -> int | None:
    """Which in-kernel activation equals ``act_fn`` (checked numerically once per activation type)."""
    key = (type(act_fn), repr(act_fn))
    if key not in _act_cache:
        t = torch.linspace(-6.0, 6.0, 241, dtype=torch.float64)
        refs = {
            "gelu": torch.nn.functional.gelu(t),
            "gelu_tanh": torch.nn.functional.gelu(t, approximate="tanh"),
            "silu": torch.nn.functional.silu(t),
            "relu": torch.relu(t),
        }
        code = None
        try:
            got = act_fn(t)
            for name, ref in refs.items():
                if torch.allclose(got, ref, atol=1e-9, rtol=0):
                    code = _ACT_CODES[name]
                    break
        except Exception:  # noqa: BLE001 - an activation we cannot probe is not fused
            code = None
        _act_cache[key] = code
    return _act_cache[key]


def fused_inference_ok(module) -> bool:
    """The fused kernels handle this module: gated experts in transformers' layout ``[E, 2I, H]`` (gate rows
    first, the default ``_apply_gate``), a known activation, no expert-parallel sentinels."""
    if not getattr(module, "has_gate", True) or getattr(module, "is_transposed", False):
        return False
    if getattr(module, "_is_expert_parallel", False):
        return False
    apply_gate = getattr(type(module), "_apply_gate", None)
    if apply_gate is not None:
        try:
            from transformers.integrations.moe import _default_apply_gate  # noqa: PLC0415
        except ImportError:
            return False
        if apply_gate is not _default_apply_gate:
            return False
    return _act_code(module.act_fn) is not None


def fused_experts_inference(self, hidden_states, top_k_index, top_k_weights):
    """Experts forward for inference on CUDA: one sort of the token-expert pairs, then

    * up kernel: gathers each pair's token row, both halves of the gated up-projection and
      ``act(gate) * up`` in one pass (the ``[S, 2I]`` intermediate is never written);
    * down kernel: down-projection, times the pair's routing weight, stored straight into
      ``(token, slot)`` order;
    * one sum over the k slots.

    Row blocks are mapped to experts inside each program from the segment ends (no schedule tensors,
    no host synchronisation). Not differentiable: callers use it under ``no_grad``/``inference_mode``.
    """
    up, down = _fused["up"], _fused["down"]
    w_up, w_down = self.gate_up_proj, self.down_proj
    num_experts, two_i, hidden_dim = w_up.shape
    inter = two_i // 2
    num_tokens = hidden_states.size(0)
    k = top_k_index.size(-1)
    n_pairs = num_tokens * k
    dtype = hidden_states.dtype
    if n_pairs == 0:
        return hidden_states.new_zeros(num_tokens, hidden_dim)

    perm, seg_end = _sort_pairs(top_k_index, num_experts)

    x = hidden_states.to(w_up.dtype)
    prec = _prec(x.dtype)
    e_p2 = triton.next_power_of_2(num_experts)
    bucket = max(1, n_pairs).bit_length()
    h = torch.empty(n_pairs, inter, device=x.device, dtype=w_down.dtype)
    grid = lambda meta: (triton.cdiv(n_pairs, meta["BM"]) + num_experts, triton.cdiv(inter, meta["BN"]))  # noqa: E731
    up[grid](
        x, w_up, h, perm, seg_end,
        inter, hidden_dim, k, bucket,
        x.stride(0), x.stride(1),
        w_up.stride(0), w_up.stride(1), w_up.stride(2),
        h.stride(0), h.stride(1),
        E=num_experts, E_P2=e_p2, ACT=_act_code(self.act_fn), PREC=prec,
    )
    y = torch.empty(n_pairs, hidden_dim, device=x.device, dtype=dtype)
    weights = top_k_weights.reshape(-1)
    grid = lambda meta: (triton.cdiv(n_pairs, meta["BM"]) + num_experts, triton.cdiv(hidden_dim, meta["BN"]))  # noqa: E731
    down[grid](
        h, w_down, y, perm, weights, seg_end,
        hidden_dim, inter, bucket,
        h.stride(0), h.stride(1),
        w_down.stride(0), w_down.stride(1), w_down.stride(2),
        y.stride(0), y.stride(1),
        E=num_experts, E_P2=e_p2, PREC=prec,
    )
    if k == 1:
        return y
    return y.view(num_tokens, k, hidden_dim).sum(dim=1)
