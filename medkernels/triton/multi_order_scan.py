"""Triton kernels for the multi-order selective scan (PointMamba2's group Point-SSM), forward and backward.

One program per (batch, ordering, block of BD channels) walks its ordering token by token through
the index (``orders[b, k, t]``): u, delta, B, C and grad_out are read at the indexed token, so no
permuted copy exists. The (BD, BN) state stays in registers; the state before every chunk of CH
tokens is saved. The output and grad_u, summed over the orderings, and dB/dC, dA, dD, ddelta_bias,
summed over channel blocks or batches, accumulate with float32 atomics (their last bits depend on
the order). The backward recomputes a chunk's states from its checkpoint into a per-program
scratch of (CH + 1, BD, BN) and runs the adjoint recurrence backwards through it.
"""

from __future__ import annotations

import torch

from . import AVAILABLE, HALF_AND_FLOAT, LaunchConfig, gpu_configs, make_config, next_pow2

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _token(
        U,
        DELTA,
        BIAS,
        B,
        C,
        ORD,
        b,
        k,
        t,
        L,
        N,
        offs_d,
        md,
        offs_n,
        mn,
        bias,
        K,
        su_b,
        su_d,
        sd_b,
        sd_k,
        sd_d,
        sB_b,
        sB_k,
        sB_n,
        sC_b,
        sC_k,
        sC_n,
        HAS_BIAS,
        SOFTPLUS,
    ):
        """Step t of ordering k: the token, u, raw delta, dt, B_t, C_t (float32)."""
        idx = tl.load(ORD + (b * K + k) * L + t)
        u = tl.load(U + b * su_b + offs_d * su_d + idx, mask=md, other=0.0).to(tl.float32)
        raw = tl.load(DELTA + b * sd_b + k * sd_k + offs_d * sd_d + idx, mask=md, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw += bias
        dt = raw
        if SOFTPLUS:
            dt = tl.where(raw <= 20.0, tl.log(1.0 + tl.exp(raw)), raw)
        Bt = tl.load(B + b * sB_b + k * sB_k + offs_n * sB_n + idx, mask=mn, other=0.0).to(tl.float32)
        Ct = tl.load(C + b * sC_b + k * sC_k + offs_n * sC_n + idx, mask=mn, other=0.0).to(tl.float32)
        return idx, u, raw, dt, Bt, Ct

    @triton.jit
    def _ordering_params(A, D, BIAS, k, DIM, N, offs_d, md, offs_n, m2, HAS_D, HAS_BIAS):
        """Ordering k's A (BD, BN) block, D and delta_bias (BD,) for channels offs_d (zeros when absent)."""
        A2 = tl.load(A + (k * DIM + offs_d[:, None]) * N + offs_n[None, :], mask=m2, other=0.0)
        Dv = tl.load(D + k * DIM + offs_d, mask=md & HAS_D, other=0.0)
        bias = tl.load(BIAS + k * DIM + offs_d, mask=md & HAS_BIAS, other=0.0)
        return A2, Dv, bias

    @triton.jit
    def _fwd_kernel(
        U,
        DELTA,
        A,
        B,
        C,
        D,
        BIAS,
        ORD,
        OUT,
        CKPT,
        L,
        DIM,
        N,
        K,
        n_chunks,
        su_b,
        su_d,
        sd_b,
        sd_k,
        sd_d,
        sB_b,
        sB_k,
        sB_n,
        sC_b,
        sC_k,
        sC_n,
        HAS_D,
        HAS_BIAS,
        SOFTPLUS,
        CH: tl.constexpr,
        BD: tl.constexpr,
        BN: tl.constexpr,
    ):
        bk = tl.program_id(0)
        b, k = bk // K, bk % K
        offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
        md = offs_d < DIM
        offs_n = tl.arange(0, BN)
        mn = offs_n < N
        m2 = md[:, None] & mn[None, :]
        A2, Dv, bias = _ordering_params(A, D, BIAS, k, DIM, N, offs_d, md, offs_n, m2, HAS_D, HAS_BIAS)
        h = tl.zeros([BD, BN], tl.float32)
        ck = CKPT + ((b * K + k) * DIM + offs_d[:, None]) * n_chunks * N + offs_n[None, :]
        for t in range(0, L):
            if t % CH == 0:
                tl.store(ck + (t // CH) * N, h, mask=m2)
            idx, u, raw, dt, Bt, Ct = _token(
                U,
                DELTA,
                BIAS,
                B,
                C,
                ORD,
                b,
                k,
                t,
                L,
                N,
                offs_d,
                md,
                offs_n,
                mn,
                bias,
                K,
                su_b,
                su_d,
                sd_b,
                sd_k,
                sd_d,
                sB_b,
                sB_k,
                sB_n,
                sC_b,
                sC_k,
                sC_n,
                HAS_BIAS,
                SOFTPLUS,
            )
            h = tl.exp(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
            # padding lanes (B = C = 0) stay out of the sums: an infinite dt * u makes them NaN
            y = tl.sum(tl.where(m2, h * Ct[None, :], 0.0), axis=1) + Dv * u
            tl.atomic_add(OUT + (b * DIM + offs_d) * L + idx, y, mask=md)

    @triton.jit
    def _bwd_kernel(
        GY,
        U,
        DELTA,
        A,
        B,
        C,
        D,
        BIAS,
        ORD,
        CKPT,
        SCR,
        DU,
        DDELTA,
        DA,
        DB,
        DC,
        DD,
        DBIAS,
        L,
        DIM,
        N,
        K,
        n_chunks,
        su_b,
        su_d,
        sd_b,
        sd_k,
        sd_d,
        sB_b,
        sB_k,
        sB_n,
        sC_b,
        sC_k,
        sC_n,
        sg_b,
        sg_d,
        HAS_D,
        HAS_BIAS,
        SOFTPLUS,
        CH: tl.constexpr,
        BD: tl.constexpr,
        BN: tl.constexpr,
    ):
        bk = tl.program_id(0)
        b, k = bk // K, bk % K
        pid = bk * tl.num_programs(1) + tl.program_id(1)
        offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
        md = offs_d < DIM
        offs_n = tl.arange(0, BN)
        mn = offs_n < N
        m2 = md[:, None] & mn[None, :]
        A2, Dv, bias = _ordering_params(A, D, BIAS, k, DIM, N, offs_d, md, offs_n, m2, HAS_D, HAS_BIAS)
        ck = CKPT + ((b * K + k) * DIM + offs_d[:, None]) * n_chunks * N + offs_n[None, :]
        scr = SCR + pid * (CH + 1) * BD * BN + tl.arange(0, BD)[:, None] * BN + offs_n[None, :]
        carry = tl.zeros([BD, BN], tl.float32)
        gA = tl.zeros([BD, BN], tl.float32)
        gD = tl.zeros([BD], tl.float32)
        gbias = tl.zeros([BD], tl.float32)
        for ci in range(0, n_chunks):
            c = n_chunks - 1 - ci
            t0 = c * CH
            n = tl.minimum(L - t0, CH)
            # Recompute the chunk's states: scr[i] = the state before step t0 + i, scr[n] after the last.
            h = tl.load(ck + c * N, mask=m2, other=0.0)
            tl.store(scr, h)
            for i in range(0, n):
                idx, u, raw, dt, Bt, Ct = _token(
                    U,
                    DELTA,
                    BIAS,
                    B,
                    C,
                    ORD,
                    b,
                    k,
                    t0 + i,
                    L,
                    N,
                    offs_d,
                    md,
                    offs_n,
                    mn,
                    bias,
                    K,
                    su_b,
                    su_d,
                    sd_b,
                    sd_k,
                    sd_d,
                    sB_b,
                    sB_k,
                    sB_n,
                    sC_b,
                    sC_k,
                    sC_n,
                    HAS_BIAS,
                    SOFTPLUS,
                )
                h = tl.exp(dt[:, None] * A2) * h + (dt * u)[:, None] * Bt[None, :]
                tl.store(scr + (i + 1) * BD * BN, h)
            for j in range(0, n):
                i = n - 1 - j
                idx, u, raw, dt, Bt, Ct = _token(
                    U,
                    DELTA,
                    BIAS,
                    B,
                    C,
                    ORD,
                    b,
                    k,
                    t0 + i,
                    L,
                    N,
                    offs_d,
                    md,
                    offs_n,
                    mn,
                    bias,
                    K,
                    su_b,
                    su_d,
                    sd_b,
                    sd_k,
                    sd_d,
                    sB_b,
                    sB_k,
                    sB_n,
                    sC_b,
                    sC_k,
                    sC_n,
                    HAS_BIAS,
                    SOFTPLUS,
                )
                gy = tl.load(GY + b * sg_b + offs_d * sg_d + idx, mask=md, other=0.0).to(tl.float32)
                h_prev = tl.load(scr + i * BD * BN)
                h_cur = tl.load(scr + (i + 1) * BD * BN)
                dA = tl.exp(dt[:, None] * A2)
                g = carry + gy[:, None] * Ct[None, :]
                tl.atomic_add(
                    DC + b * sC_b + k * sC_k + offs_n * sC_n + idx,
                    tl.sum(tl.where(m2, gy[:, None] * h_cur, 0.0), axis=0),
                    mask=mn,
                )
                tl.atomic_add(
                    DB + b * sB_b + k * sB_k + offs_n * sB_n + idx,
                    tl.sum(tl.where(m2, g * (dt * u)[:, None], 0.0), axis=0),
                    mask=mn,
                )
                x = g * h_prev * dA
                gA += x * dt[:, None]
                sB = tl.sum(tl.where(m2, g * Bt[None, :], 0.0), axis=1)
                gdt = tl.sum(tl.where(m2, x * A2, 0.0), axis=1) + u * sB
                if SOFTPLUS:
                    gdt = gdt * tl.where(raw <= 20.0, 1.0 / (1.0 + tl.exp(-raw)), 1.0)
                tl.store(DDELTA + b * sd_b + k * sd_k + offs_d * sd_d + idx, gdt, mask=md)
                tl.atomic_add(DU + (b * DIM + offs_d) * L + idx, gy * Dv + dt * sB, mask=md)
                gD += gy * u
                gbias += gdt
                carry = g * dA
        tl.atomic_add(DA + (k * DIM + offs_d[:, None]) * N + offs_n[None, :], gA, mask=m2)
        tl.atomic_add(DD + k * DIM + offs_d, gD, mask=md & HAS_D)
        tl.atomic_add(DBIAS + k * DIM + offs_d, gbias, mask=md & HAS_BIAS)

    def chunk_len() -> int:
        """Tokens between saved states (small in the interpreter, to exercise chunk boundaries)."""
        return GPU_CHUNK if gpu_configs() else 4


#: Tokens between saved states on a GPU; the largest dstate the Triton kernels take (as selective_scan).
GPU_CHUNK = 64
MAX_STATE = 256
#: Elements of a program's (BD channels, BN states) tile: the backward keeps about eight such float32
#: tiles live (state, carry, dA, gA, ...); at 512 they fit 8 warps' registers (4 warps spill on sm_80).
TILE = 512


def tiles(dstate: int) -> tuple[int, int]:
    """(BD, BN): BN a power of two >= dstate (at least 16), BD = TILE // BN channels (at most 32)."""
    bn = max(16, next_pow2(dstate))
    return min(32, max(1, TILE // bn)), bn


def launch_config(backward: bool, dtype: torch.dtype, dstate: int, chunk: int) -> LaunchConfig:
    """The launch of the forward (or backward) kernel: a pure function of the shapes.

    Args:
        backward: the backward kernel instead of the forward one.
        dtype: u's storage dtype (delta, B, C and grad_out share it; the kernels convert on load).
        dstate: N.
        chunk: tokens between saved states (CH), from ``chunk_len()``.

    Returns:
        The :class:`~medkernels.triton.LaunchConfig`.
    """
    bd, bn = tiles(dstate)
    if backward:
        kernel, names = (
            _bwd_kernel,
            (
                "GY",
                "U",
                "DELTA",
                "A",
                "B",
                "C",
                "D",
                "BIAS",
                "ORD",
                "CKPT",
                "SCR",
                "DU",
                "DDELTA",
                "DA",
                "DB",
                "DC",
                "DD",
                "DBIAS",
            ),
        )
    else:
        kernel, names = _fwd_kernel, ("U", "DELTA", "A", "B", "C", "D", "BIAS", "ORD", "OUT", "CKPT")
    stored = {"GY", "U", "DELTA", "B", "C"}
    pointers = {n: dtype if n in stored else torch.int64 if n == "ORD" else torch.float32 for n in names}
    return make_config(
        kernel,
        pointers=pointers,
        flags=("HAS_D", "HAS_BIAS", "SOFTPLUS"),
        num_warps=8 if backward else 4,
        num_stages=3,
        constexprs=dict(CH=chunk, BD=bd, BN=bn),
    )


def configs() -> list[LaunchConfig]:
    """Every configuration :func:`launch_config` returns on a GPU."""
    seen: dict[LaunchConfig, None] = {}
    for backward in (False, True):
        for dtype in HALF_AND_FLOAT:
            for n in range(1, MAX_STATE + 1):
                seen[launch_config(backward, dtype, n, GPU_CHUNK)] = None
    return list(seen)


if AVAILABLE:

    def forward(u, delta, A, B, C, D, delta_bias, orders, softplus: bool, chunk: int):
        """u (batch, dim, L), delta (batch, K, dim, L), B/C (batch, K, N, L) with unit stride along L;
        A (K, dim, N), D/delta_bias (K, dim) float32 contiguous. Returns out float32, checkpoints."""
        batch, dim, L = u.shape
        K, N = A.shape[0], A.shape[2]
        n_chunks = (L + chunk - 1) // chunk
        out = torch.zeros(batch, dim, L, device=u.device, dtype=torch.float32)
        ckpt = torch.empty(batch, K * dim, n_chunks, N, device=u.device, dtype=torch.float32)
        if out.numel() == 0:
            return out, ckpt
        cfg = launch_config(False, u.dtype, N, chunk)
        BD = dict(cfg.constexprs)["BD"]
        dummy = A
        _fwd_kernel[(batch * K, triton.cdiv(dim, BD))](
            u,
            delta,
            A,
            B,
            C,
            D if D is not None else dummy,
            delta_bias if delta_bias is not None else dummy,
            orders,
            out,
            ckpt,
            L,
            dim,
            N,
            K,
            n_chunks,
            u.stride(0),
            u.stride(1),
            delta.stride(0),
            delta.stride(1),
            delta.stride(2),
            B.stride(0),
            B.stride(1),
            B.stride(2),
            C.stride(0),
            C.stride(1),
            C.stride(2),
            D is not None,
            delta_bias is not None,
            bool(softplus),
            **cfg.launch_kwargs(),
        )
        return out, ckpt

    def backward(grad_out, u, delta, A, B, C, D, delta_bias, orders, ckpt, softplus: bool, chunk: int):
        """Float32 gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias); dD/ddelta_bias None when absent.
        delta, B and C must be contiguous (their gradients are written with their strides)."""
        batch, dim, L = u.shape
        K, N = A.shape[0], A.shape[2]
        n_chunks = ckpt.shape[2]
        f32 = {"device": u.device, "dtype": torch.float32}
        du = torch.zeros(batch, dim, L, **f32)
        ddelta = torch.zeros(delta.shape, **f32)
        dA = torch.zeros(A.shape, **f32)
        dB = torch.zeros(B.shape, **f32)
        dC = torch.zeros(C.shape, **f32)
        dD = torch.zeros(K, dim, **f32) if D is not None else None
        dbias = torch.zeros(K, dim, **f32) if delta_bias is not None else None
        if u.numel() == 0:
            return du, ddelta, dA, dB, dC, dD, dbias
        cfg = launch_config(True, u.dtype, N, chunk)
        BD, BN = dict(cfg.constexprs)["BD"], dict(cfg.constexprs)["BN"]
        grid = (batch * K, triton.cdiv(dim, BD))
        scratch = torch.empty(grid[0] * grid[1] * (chunk + 1) * BD * BN, **f32)
        dummy = A
        _bwd_kernel[grid](
            grad_out,
            u,
            delta,
            A,
            B,
            C,
            D if D is not None else dummy,
            delta_bias if delta_bias is not None else dummy,
            orders,
            ckpt,
            scratch,
            du,
            ddelta,
            dA,
            dB,
            dC,
            dD if dD is not None else dummy,
            dbias if dbias is not None else dummy,
            L,
            dim,
            N,
            K,
            n_chunks,
            u.stride(0),
            u.stride(1),
            delta.stride(0),
            delta.stride(1),
            delta.stride(2),
            B.stride(0),
            B.stride(1),
            B.stride(2),
            C.stride(0),
            C.stride(1),
            C.stride(2),
            grad_out.stride(0),
            grad_out.stride(1),
            D is not None,
            delta_bias is not None,
            bool(softplus),
            **cfg.launch_kwargs(),
        )
        return du, ddelta, dA, dB, dC, dD, dbias
