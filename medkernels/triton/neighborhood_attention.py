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

from . import AVAILABLE, gpu_configs


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
    def _fwd_kernel(Q, K, V, KEYS, VALID, REL, RPB, AK, AV, OUT, LSE, N, H, HKV, KP, N_ADD, D, DV, R,
                    HAS_RPB: tl.constexpr, BQ: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr):
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
            krow = tl.load(K + (bk * N + kidx[:, None]) * D + offs_d[None, :], mask=ok[:, None] & md[None, :], other=0.0)
            logit = tl.sum(q * krow, axis=1)
            if HAS_RPB:
                r = tl.load(REL + offs_q * KP + s, mask=mq, other=0)
                logit += tl.load(RPB + h * R + r, mask=ok, other=0.0)
            logit = tl.where(ok, logit, float("-inf"))
            vrow = tl.load(V + (bk * N + kidx[:, None]) * DV + offs_v[None, :], mask=ok[:, None] & mv[None, :], other=0.0)
            m_i, l_i, acc = _online_softmax_step(m_i, l_i, acc, logit, vrow)
        for a in range(0, N_ADD):
            krow = tl.load(AK + (bk * N_ADD + a) * D + offs_d, mask=md, other=0.0)
            vrow = tl.load(AV + (bk * N_ADD + a) * DV + offs_v, mask=mv, other=0.0)
            logit = tl.where(mq, tl.sum(q * krow[None, :], axis=1), float("-inf"))
            m_i, l_i, acc = _online_softmax_step(m_i, l_i, acc, logit, vrow[None, :])
        l_safe = tl.where(mq, l_i, 1.0)
        tl.store(OUT + (bh * N + offs_q[:, None]) * DV + offs_v[None, :], acc / l_safe[:, None],
                 mask=mq[:, None] & mv[None, :])
        # an infinite max is the logsumexp itself (torch.logsumexp), not inf - inf = NaN
        lse = tl.where((m_i == float("inf")) | (m_i == float("-inf")), m_i, m_i + tl.log(l_safe))
        tl.store(LSE + bh * N + offs_q, lse, mask=mq)

    @triton.jit
    def _bwd_dq_kernel(Q, K, V, DO, LSE, DROW, KEYS, VALID, REL, RPB, AK, AV, DQ, DS, DAK, DAV, N, H, HKV, KP,
                       N_ADD, D, DV, R, N_QB, scale, HAS_RPB: tl.constexpr, BQ: tl.constexpr, BD: tl.constexpr,
                       BDV: tl.constexpr):
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
            krow = tl.load(K + (bk * N + kidx[:, None]) * D + offs_d[None, :], mask=ok[:, None] & md[None, :], other=0.0)
            vrow = tl.load(V + (bk * N + kidx[:, None]) * DV + offs_v[None, :], mask=ok[:, None] & mv[None, :], other=0.0)
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
    def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DROW, INV_Q, INV_S, INV_VALID, REL, RPB, DK, DV_OUT, N, H, HKV, KP, IMAX,
                         D, DV, R, HAS_RPB: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr):
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
                qrow = tl.load(Q + (bh * N + qi[:, None]) * D + offs_d[None, :], mask=ok[:, None] & md[None, :], other=0.0)
                dorow = tl.load(DO + (bh * N + qi[:, None]) * DV + offs_v[None, :], mask=ok[:, None] & mv[None, :],
                                other=0.0)
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


def _blocks(n_tokens: int, d: int, dv: int):
    block = 32 if gpu_configs() else 16
    return block, triton.cdiv(n_tokens, block), triton.next_power_of_2(d), triton.next_power_of_2(dv)


def forward(q, k, v, keys, valid, rel, rpb, ak, av, heads: int, kv_heads: int):
    """q (B*H, N, D) pre-scaled; k, v (B*H_kv, N, D/Dv); returns out (B*H, N, Dv), lse (B*H, N)."""
    BH, N, D = q.shape
    DV = v.shape[-1]
    KP = keys.shape[1]
    n_add = 0 if ak is None else ak.shape[1]
    out = q.new_empty((BH, N, DV))
    lse = q.new_empty((BH, N))
    BQ, nqb, BD, BDV = _blocks(N, D, DV)
    dummy = q.new_empty(1)
    R = rpb.shape[1] if rpb is not None else 1
    _fwd_kernel[(nqb, BH)](q, k, v, keys, valid, rel, rpb if rpb is not None else dummy,
                           ak if ak is not None else dummy, av if av is not None else dummy, out, lse,
                           N, heads, kv_heads, KP, n_add, D, DV, R, HAS_RPB=rpb is not None, BQ=BQ, BD=BD, BDV=BDV)
    return out, lse


def backward(q, k, v, do, lse, drow, keys, valid, rel, inv_q, inv_slot, inv_valid, rpb, ak, av, scale: float,
             heads: int, kv_heads: int):
    """Returns dq (B*H, N, D), dk, dv (B*H_kv, N, D/Dv), ds (B*H, N, slots) or None, and per-block
    partials of the additional keys/values gradients (B*H, blocks, n_add, D/Dv) or None."""
    BH, N, D = q.shape
    DV = v.shape[-1]
    KP = keys.shape[1]
    n_add = 0 if ak is None else ak.shape[1]
    BQ, nqb, BD, BDV = _blocks(N, D, DV)
    dummy = q.new_empty(1)
    R = rpb.shape[1] if rpb is not None else 1
    dq = torch.empty_like(q)
    ds = q.new_zeros((BH, N, KP)) if rpb is not None else dummy
    dak = q.new_empty((BH, nqb, n_add, D)) if n_add else dummy
    dav = q.new_empty((BH, nqb, n_add, DV)) if n_add else dummy
    _bwd_dq_kernel[(nqb, BH)](q, k, v, do, lse, drow, keys, valid, rel, rpb if rpb is not None else dummy,
                              ak if n_add else dummy, av if n_add else dummy, dq, ds, dak, dav, N, heads, kv_heads,
                              KP, n_add, D, DV, R, nqb, scale, HAS_RPB=rpb is not None, BQ=BQ, BD=BD, BDV=BDV)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    _bwd_dkdv_kernel[(nqb, k.shape[0])](q, k, v, do, lse, drow, inv_q, inv_slot, inv_valid, rel,
                                        rpb if rpb is not None else dummy, dk, dv, N, heads, kv_heads, KP,
                                        inv_q.shape[1], D, DV, R, HAS_RPB=rpb is not None, BK=BQ, BD=BD, BDV=BDV)
    return dq, dk, dv, (ds if rpb is not None else None), (dak if n_add else None), (dav if n_add else None)
