"""Triton kernels for fused neighborhood attention (the GPU path), forward and backward.

Only kernels and their launch configuration live here; medkernels.ops.neighborhood_attention builds
the window tables, the canonical buffers and the op. Layout: q (pre-scaled), k, v, dO, out are
float32 ``(batch * heads, tokens, dim)``; ``keys/valid/rel`` are per-query window tables
``(tokens, slots)``; ``inv_q/inv_slot/inv_valid`` the per-key inverse tables ``(tokens, imax)``.

The kernels gather each query's (or key's) rows by index, so any window shape, stride, dilation or
causal mix works; they run on CUDA and, for tests, on CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch

from . import AVAILABLE, LaunchConfig, gpu_configs, make_config, next_pow2

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _online_softmax_step(m_i, l_i, acc, logit, vrow):
        """Folds one key per query (logit, -inf when masked; its value row) into the running max m_i,
        denominator l_i and numerator acc; a row that has seen only -inf stays (-inf, 0, 0)."""
        m_new = tl.maximum(m_i, logit)
        safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - safe)
        p = tl.exp(logit - safe)
        return m_new, l_i * alpha + p, acc * alpha[:, None] + p[:, None] * vrow

    @triton.jit
    def _fwd_kernel(
        Q,
        K,
        V,
        KEYS,
        VALID,
        REL,
        RPB,
        AK,
        AV,
        OUT,
        LSE,
        N,
        H,
        HKV,
        KP,
        N_ADD,
        D,
        DV,
        R,
        HAS_RPB: tl.constexpr,
        BQ: tl.constexpr,
        BD: tl.constexpr,
        BDV: tl.constexpr,
    ):
        pid_q = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        bk = b * HKV + h // (H // HKV)
        offs_q = pid_q * BQ + tl.arange(0, BQ)
        mq = offs_q < N
        offs_d = tl.arange(0, BD)
        offs_v = tl.arange(0, BDV)
        md = offs_d < D
        mv = offs_v < DV
        q = tl.load(Q + (bh * N + offs_q[:, None]) * D + offs_d[None, :], mask=mq[:, None] & md[None, :], other=0.0)
        m_i = tl.full([BQ], float("-inf"), tl.float32)
        l_i = tl.zeros([BQ], tl.float32)
        acc = tl.zeros([BQ, BDV], tl.float32)
        for s in range(0, KP):
            kidx = tl.load(KEYS + offs_q * KP + s, mask=mq, other=0)
            ok = (tl.load(VALID + offs_q * KP + s, mask=mq, other=0) != 0) & mq
            krow = tl.load(
                K + (bk * N + kidx[:, None]) * D + offs_d[None, :], mask=ok[:, None] & md[None, :], other=0.0
            )
            logit = tl.sum(q * krow, axis=1)
            if HAS_RPB:
                r = tl.load(REL + offs_q * KP + s, mask=mq, other=0)
                logit += tl.load(RPB + h * R + r, mask=ok, other=0.0)
            logit = tl.where(ok, logit, float("-inf"))
            vrow = tl.load(
                V + (bk * N + kidx[:, None]) * DV + offs_v[None, :], mask=ok[:, None] & mv[None, :], other=0.0
            )
            m_i, l_i, acc = _online_softmax_step(m_i, l_i, acc, logit, vrow)
        for a in range(0, N_ADD):
            krow = tl.load(AK + (bk * N_ADD + a) * D + offs_d, mask=md, other=0.0)
            vrow = tl.load(AV + (bk * N_ADD + a) * DV + offs_v, mask=mv, other=0.0)
            logit = tl.where(mq, tl.sum(q * krow[None, :], axis=1), float("-inf"))
            m_i, l_i, acc = _online_softmax_step(m_i, l_i, acc, logit, vrow[None, :])
        l_safe = tl.where(mq, l_i, 1.0)
        tl.store(
            OUT + (bh * N + offs_q[:, None]) * DV + offs_v[None, :],
            acc / l_safe[:, None],
            mask=mq[:, None] & mv[None, :],
        )
        # an infinite max is the logsumexp itself (torch.logsumexp), not inf - inf = NaN
        lse = tl.where((m_i == float("inf")) | (m_i == float("-inf")), m_i, m_i + tl.log(l_safe))
        tl.store(LSE + bh * N + offs_q, lse, mask=mq)

    @triton.jit
    def _bwd_dq_kernel(
        Q,
        K,
        V,
        DO,
        LSE,
        DROW,
        KEYS,
        VALID,
        REL,
        RPB,
        AK,
        AV,
        DQ,
        DS,
        DAK,
        DAV,
        N,
        H,
        HKV,
        KP,
        N_ADD,
        D,
        DV,
        R,
        N_QB,
        scale,
        HAS_RPB: tl.constexpr,
        BQ: tl.constexpr,
        BD: tl.constexpr,
        BDV: tl.constexpr,
    ):
        pid_q = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        bk = b * HKV + h // (H // HKV)
        offs_q = pid_q * BQ + tl.arange(0, BQ)
        mq = offs_q < N
        offs_d = tl.arange(0, BD)
        offs_v = tl.arange(0, BDV)
        md = offs_d < D
        mv = offs_v < DV
        q = tl.load(Q + (bh * N + offs_q[:, None]) * D + offs_d[None, :], mask=mq[:, None] & md[None, :], other=0.0)
        do = tl.load(DO + (bh * N + offs_q[:, None]) * DV + offs_v[None, :], mask=mq[:, None] & mv[None, :], other=0.0)
        lse = tl.load(LSE + bh * N + offs_q, mask=mq, other=0.0)
        drow = tl.load(DROW + bh * N + offs_q, mask=mq, other=0.0)
        dq = tl.zeros([BQ, BD], tl.float32)
        for s in range(0, KP):
            kidx = tl.load(KEYS + offs_q * KP + s, mask=mq, other=0)
            ok = (tl.load(VALID + offs_q * KP + s, mask=mq, other=0) != 0) & mq
            krow = tl.load(
                K + (bk * N + kidx[:, None]) * D + offs_d[None, :], mask=ok[:, None] & md[None, :], other=0.0
            )
            vrow = tl.load(
                V + (bk * N + kidx[:, None]) * DV + offs_v[None, :], mask=ok[:, None] & mv[None, :], other=0.0
            )
            logit = tl.sum(q * krow, axis=1)
            if HAS_RPB:
                r = tl.load(REL + offs_q * KP + s, mask=mq, other=0)
                logit += tl.load(RPB + h * R + r, mask=ok, other=0.0)
            p = tl.where(ok, tl.exp(logit - lse), 0.0)
            ds = p * (tl.sum(do * vrow, axis=1) - drow)
            dq += ds[:, None] * krow
            if HAS_RPB:
                tl.store(DS + (bh * N + offs_q) * KP + s, ds, mask=mq)
        for a in range(0, N_ADD):
            krow = tl.load(AK + (bk * N_ADD + a) * D + offs_d, mask=md, other=0.0)
            vrow = tl.load(AV + (bk * N_ADD + a) * DV + offs_v, mask=mv, other=0.0)
            p = tl.where(mq, tl.exp(tl.sum(q * krow[None, :], axis=1) - lse), 0.0)
            ds = p * (tl.sum(do * vrow[None, :], axis=1) - drow)
            dq += ds[:, None] * krow[None, :]
            part = (bh * N_QB + pid_q) * N_ADD + a
            tl.store(DAK + part * D + offs_d, tl.sum(ds[:, None] * q, axis=0), mask=md)
            tl.store(DAV + part * DV + offs_v, tl.sum(p[:, None] * do, axis=0), mask=mv)
        tl.store(DQ + (bh * N + offs_q[:, None]) * D + offs_d[None, :], dq * scale, mask=mq[:, None] & md[None, :])

    @triton.jit
    def _bwd_dkdv_kernel(
        Q,
        K,
        V,
        DO,
        LSE,
        DROW,
        INV_Q,
        INV_S,
        INV_VALID,
        REL,
        RPB,
        DK,
        DV_OUT,
        N,
        H,
        HKV,
        KP,
        IMAX,
        D,
        DV,
        R,
        HAS_RPB: tl.constexpr,
        BK: tl.constexpr,
        BD: tl.constexpr,
        BDV: tl.constexpr,
    ):
        pid_k = tl.program_id(0)
        bk = tl.program_id(1)
        b = bk // HKV
        hk = bk % HKV
        G = H // HKV
        offs_k = pid_k * BK + tl.arange(0, BK)
        mk = offs_k < N
        offs_d = tl.arange(0, BD)
        offs_v = tl.arange(0, BDV)
        md = offs_d < D
        mv = offs_v < DV
        k = tl.load(K + (bk * N + offs_k[:, None]) * D + offs_d[None, :], mask=mk[:, None] & md[None, :], other=0.0)
        v = tl.load(V + (bk * N + offs_k[:, None]) * DV + offs_v[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
        dk = tl.zeros([BK, BD], tl.float32)
        dv = tl.zeros([BK, BDV], tl.float32)
        for g in range(0, G):
            h = hk * G + g
            bh = b * H + h
            for t in range(0, IMAX):
                qi = tl.load(INV_Q + offs_k * IMAX + t, mask=mk, other=0)
                ok = (tl.load(INV_VALID + offs_k * IMAX + t, mask=mk, other=0) != 0) & mk
                qrow = tl.load(
                    Q + (bh * N + qi[:, None]) * D + offs_d[None, :], mask=ok[:, None] & md[None, :], other=0.0
                )
                dorow = tl.load(
                    DO + (bh * N + qi[:, None]) * DV + offs_v[None, :], mask=ok[:, None] & mv[None, :], other=0.0
                )
                lse = tl.load(LSE + bh * N + qi, mask=ok, other=0.0)
                drow = tl.load(DROW + bh * N + qi, mask=ok, other=0.0)
                logit = tl.sum(qrow * k, axis=1)
                if HAS_RPB:
                    slot = tl.load(INV_S + offs_k * IMAX + t, mask=mk, other=0)
                    r = tl.load(REL + qi * KP + slot, mask=ok, other=0)
                    logit += tl.load(RPB + h * R + r, mask=ok, other=0.0)
                p = tl.where(ok, tl.exp(logit - lse), 0.0)
                ds = p * (tl.sum(dorow * v, axis=1) - drow)
                dk += ds[:, None] * qrow
                dv += p[:, None] * dorow
        tl.store(DK + (bk * N + offs_k[:, None]) * D + offs_d[None, :], dk, mask=mk[:, None] & md[None, :])
        tl.store(DV_OUT + (bk * N + offs_k[:, None]) * DV + offs_v[None, :], dv, mask=mk[:, None] & mv[None, :])


#: The largest head dim (of q/k or of v) the Triton kernels take (larger ones run on the cpu or reference backend).
MAX_HEAD_DIM = 256
_KERNELS = ("fwd", "dq", "dkdv")


def tiles(kernel: str, d: int, dv: int, gpu: bool = True) -> tuple[int, int]:
    """(BQ, BD) of ``kernel``: BD covers both head dims (a power of two, at least 16; the kernels mask each),
    BQ queries (or keys) per program. On a GPU 8 warps hold the gathered (BQ, BD) float32 rows in registers
    when BQ x BD <= 2048: BQ = 32 up to BD 64, then 16, and 8 at BD 256 for the backward (the forward keeps
    16 there: it fits, and 8 spills on sm_80). 16 in the interpreter."""
    bd = max(16, next_pow2(max(d, dv)))
    if not gpu:
        return 16, bd
    return (max(16 if kernel == "fwd" else 8, min(32, 2048 // bd))), bd


def launch_config(kernel: str, d: int, dv: int, has_rpb: bool, gpu: bool = True) -> LaunchConfig:
    """The launch of ``"fwd"``, ``"dq"`` or ``"dkdv"`` (float32 tensors, int32/int8 tables): a pure function
    of the head dims and whether there is a relative positional bias."""
    f32, i32, i8 = torch.float32, torch.int32, torch.int8
    bq, bd = tiles(kernel, d, dv, gpu)
    blocks = dict(HAS_RPB=has_rpb, BD=bd, BDV=bd)
    qkv = dict(Q=f32, K=f32, V=f32, RPB=f32, REL=i32)
    if kernel == "fwd":
        return make_config(
            _fwd_kernel,
            pointers=dict(qkv, KEYS=i32, VALID=i8, AK=f32, AV=f32, OUT=f32, LSE=f32),
            num_warps=8,
            num_stages=3,
            constexprs=dict(blocks, BQ=bq),
        )
    grads = dict(qkv, DO=f32, LSE=f32, DROW=f32)
    if kernel == "dq":
        return make_config(
            _bwd_dq_kernel,
            pointers=dict(grads, KEYS=i32, VALID=i8, AK=f32, AV=f32, DQ=f32, DS=f32, DAK=f32, DAV=f32),
            floats=("scale",),
            num_warps=8,
            num_stages=3,
            constexprs=dict(blocks, BQ=bq),
        )
    return make_config(
        _bwd_dkdv_kernel,
        pointers=dict(grads, INV_Q=i32, INV_S=i32, INV_VALID=i8, DK=f32, DV_OUT=f32),
        num_warps=8,
        num_stages=3,
        constexprs=dict(blocks, BK=bq),
    )


def configs() -> list[LaunchConfig]:
    """Every configuration :func:`launch_config` returns on a GPU."""
    return list(
        dict.fromkeys(
            launch_config(k, d, d, rpb) for k in _KERNELS for rpb in (False, True) for d in range(1, MAX_HEAD_DIM + 1)
        )
    )


def forward(q, k, v, keys, valid, rel, rpb, ak, av, heads: int, kv_heads: int):
    """q (B*H, N, D) pre-scaled; k, v (B*H_kv, N, D/Dv); returns out (B*H, N, Dv), lse (B*H, N)."""
    BH, N, D = q.shape
    DV = v.shape[-1]
    KP = keys.shape[1]
    n_add = 0 if ak is None else ak.shape[1]
    out = q.new_empty((BH, N, DV))
    lse = q.new_empty((BH, N))
    cfg = launch_config("fwd", D, DV, rpb is not None, gpu_configs())
    nqb = triton.cdiv(N, dict(cfg.constexprs)["BQ"])
    dummy = q.new_empty(1)
    R = rpb.shape[1] if rpb is not None else 1
    _fwd_kernel[(nqb, BH)](
        q,
        k,
        v,
        keys,
        valid,
        rel,
        rpb if rpb is not None else dummy,
        ak if ak is not None else dummy,
        av if av is not None else dummy,
        out,
        lse,
        N,
        heads,
        kv_heads,
        KP,
        n_add,
        D,
        DV,
        R,
        **cfg.launch_kwargs(),
    )
    return out, lse


def backward(
    q,
    k,
    v,
    do,
    lse,
    drow,
    keys,
    valid,
    rel,
    inv_q,
    inv_slot,
    inv_valid,
    rpb,
    ak,
    av,
    scale: float,
    heads: int,
    kv_heads: int,
):
    """Returns dq (B*H, N, D), dk, dv (B*H_kv, N, D/Dv), ds (B*H, N, slots) or None, and per-block
    partials of the additional keys/values gradients (B*H, blocks, n_add, D/Dv) or None."""
    BH, N, D = q.shape
    DV = v.shape[-1]
    KP = keys.shape[1]
    n_add = 0 if ak is None else ak.shape[1]
    cfg = launch_config("dq", D, DV, rpb is not None, gpu_configs())
    nqb = triton.cdiv(N, dict(cfg.constexprs)["BQ"])
    dummy = q.new_empty(1)
    R = rpb.shape[1] if rpb is not None else 1
    dq = torch.empty_like(q)
    ds = q.new_zeros((BH, N, KP)) if rpb is not None else dummy
    dak = q.new_empty((BH, nqb, n_add, D)) if n_add else dummy
    dav = q.new_empty((BH, nqb, n_add, DV)) if n_add else dummy
    _bwd_dq_kernel[(nqb, BH)](
        q,
        k,
        v,
        do,
        lse,
        drow,
        keys,
        valid,
        rel,
        rpb if rpb is not None else dummy,
        ak if n_add else dummy,
        av if n_add else dummy,
        dq,
        ds,
        dak,
        dav,
        N,
        heads,
        kv_heads,
        KP,
        n_add,
        D,
        DV,
        R,
        nqb,
        float(scale),
        **cfg.launch_kwargs(),
    )
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    cfg_kv = launch_config("dkdv", D, DV, rpb is not None, gpu_configs())
    _bwd_dkdv_kernel[(triton.cdiv(N, dict(cfg_kv.constexprs)["BK"]), k.shape[0])](
        q,
        k,
        v,
        do,
        lse,
        drow,
        inv_q,
        inv_slot,
        inv_valid,
        rel,
        rpb if rpb is not None else dummy,
        dk,
        dv,
        N,
        heads,
        kv_heads,
        KP,
        inv_q.shape[1],
        D,
        DV,
        R,
        **cfg_kv.launch_kwargs(),
    )
    return dq, dk, dv, (ds if rpb is not None else None), (dak if n_add else None), (dav if n_add else None)
