"""Triton kernels for D-Former's 3D group attention (the GPU path), forward and backward.

One program per (block of a group's members, group, batch x head). Members are enumerated
row-major over the clamped group and mapped to grid coordinates in the kernel
(``x = g * grp_step + m * pos_step`` per axis; past the axis = padding, masked), so q/k/v are read in
place through their strides. The forward runs an online softmax over key blocks; the backward is
FlashAttention-2's: one kernel per key block for dk/dv, one per query block for dq (every token is
in exactly one group, so each program owns its output rows: no atomics).
"""

from __future__ import annotations

import torch

from . import AVAILABLE, HALF_AND_FLOAT, LaunchConfig, make_config, next_pow2

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _members(offs, g0, g1, g2, T, S0, S1, S2, G1, G2, GS0, GS1, GS2, PS0, PS1, PS2):
        """Grid coordinates of group members ``offs`` and whether each exists."""
        m0 = offs // (G1 * G2)
        m1 = (offs // G2) % G1
        m2 = offs % G2
        x0 = g0 * GS0 + m0 * PS0
        x1 = g1 * GS1 + m1 * PS1
        x2 = g2 * GS2 + m2 * PS2
        ok = (offs < T) & (x0 < S0) & (x1 < S1) & (x2 < S2)
        return x0, x1, x2, ok

    @triton.jit
    def _program(H, NG1, NG2):
        """(batch, head, group coordinates) of this program (grid axis 1: group, axis 2: batch * heads)."""
        gid = tl.program_id(1)
        bh = tl.program_id(2)
        return bh // H, bh % H, gid // (NG1 * NG2), (gid // NG2) % NG1, gid % NG2

    @triton.jit
    def _gather(P, b, x0, x1, x2, h, s_b, s_0, s_1, s_2, s_h, offs_d, mask):
        """Rows (b, x0, x1, x2, h) of a strided ``[B, D, H, W, heads, dim]`` tensor, in float32."""
        off = b * s_b + x0 * s_0 + x1 * s_1 + x2 * s_2 + h * s_h
        return tl.load(P + off[:, None] + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _rows(x0, x1, x2, S1, S2, b, h, S0, H):
        """Row index (batch, x0, x1, x2, head) in the contiguous outputs."""
        return (((b * S0 + x0) * S1 + x1) * S2 + x2) * H + h

    @triton.jit
    def _fwd_kernel(
        Q,
        K,
        V,
        OUT,
        LSE,
        sq_b,
        sq_0,
        sq_1,
        sq_2,
        sq_h,
        sk_b,
        sk_0,
        sk_1,
        sk_2,
        sk_h,
        sv_b,
        sv_0,
        sv_1,
        sv_2,
        sv_h,
        S0,
        S1,
        S2,
        H,
        DIM,
        T,
        NG1,
        NG2,
        G1,
        G2,
        GS0,
        GS1,
        GS2,
        PS0,
        PS1,
        PS2,
        scale,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BD: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        b, h, g0, g1, g2 = _program(H, NG1, NG2)
        offs_d = tl.arange(0, BD)
        md = offs_d < DIM
        offs_m = pid_m * BM + tl.arange(0, BM)
        x0, x1, x2, mq = _members(offs_m, g0, g1, g2, T, S0, S1, S2, G1, G2, GS0, GS1, GS2, PS0, PS1, PS2)
        q = _gather(Q, b, x0, x1, x2, h, sq_b, sq_0, sq_1, sq_2, sq_h, offs_d, mq[:, None] & md[None, :]) * scale
        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, BD], tl.float32)
        for n0 in range(0, T, BN):
            offs_n = n0 + tl.arange(0, BN)
            y0, y1, y2, mk = _members(offs_n, g0, g1, g2, T, S0, S1, S2, G1, G2, GS0, GS1, GS2, PS0, PS1, PS2)
            m2 = mk[:, None] & md[None, :]
            k = _gather(K, b, y0, y1, y2, h, sk_b, sk_0, sk_1, sk_2, sk_h, offs_d, m2)
            v = _gather(V, b, y0, y1, y2, h, sv_b, sv_0, sv_1, sv_2, sv_h, offs_d, m2)
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
            s = tl.where(mk[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: member 0 of every group exists
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
            m_i = m_new
        rows = _rows(x0, x1, x2, S1, S2, b, h, S0, H)
        tl.store(OUT + rows[:, None] * DIM + offs_d[None, :], acc / l_i[:, None], mask=mq[:, None] & md[None, :])
        # an infinite max is the logsumexp itself (torch.logsumexp), not inf - inf = NaN
        lse = tl.where((m_i == float("inf")) | (m_i == float("-inf")), m_i, m_i + tl.log(l_i))
        tl.store(LSE + rows, lse, mask=mq)

    @triton.jit
    def _query_grads(DO, LSE, DROW, rows, offs_d, DIM, mq, mqd):
        """A query block's output gradient, log-sum-exp and rowsum(dO * O) (contiguous, by row)."""
        do = tl.load(DO + rows[:, None] * DIM + offs_d[None, :], mask=mqd, other=0.0)
        return do, tl.load(LSE + rows, mask=mq, other=0.0), tl.load(DROW + rows, mask=mq, other=0.0)

    @triton.jit
    def _probs(q, k, lse, mq, mk):
        """P = exp(q k^T - lse) on existing (query, key) pairs, 0 elsewhere."""
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        return tl.where(mq[:, None] & mk[None, :], tl.exp(s - lse[:, None]), 0.0)

    @triton.jit
    def _bwd_dkdv_kernel(
        Q,
        K,
        V,
        DO,
        LSE,
        DROW,
        DK,
        DV,
        sq_b,
        sq_0,
        sq_1,
        sq_2,
        sq_h,
        sk_b,
        sk_0,
        sk_1,
        sk_2,
        sk_h,
        sv_b,
        sv_0,
        sv_1,
        sv_2,
        sv_h,
        S0,
        S1,
        S2,
        H,
        DIM,
        T,
        NG1,
        NG2,
        G1,
        G2,
        GS0,
        GS1,
        GS2,
        PS0,
        PS1,
        PS2,
        scale,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BD: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        b, h, g0, g1, g2 = _program(H, NG1, NG2)
        offs_d = tl.arange(0, BD)
        md = offs_d < DIM
        offs_n = pid_n * BN + tl.arange(0, BN)
        y0, y1, y2, mk = _members(offs_n, g0, g1, g2, T, S0, S1, S2, G1, G2, GS0, GS1, GS2, PS0, PS1, PS2)
        mkd = mk[:, None] & md[None, :]
        k = _gather(K, b, y0, y1, y2, h, sk_b, sk_0, sk_1, sk_2, sk_h, offs_d, mkd)
        v = _gather(V, b, y0, y1, y2, h, sv_b, sv_0, sv_1, sv_2, sv_h, offs_d, mkd)
        dk = tl.zeros([BN, BD], tl.float32)
        dv = tl.zeros([BN, BD], tl.float32)
        for m0 in range(0, T, BM):
            offs_m = m0 + tl.arange(0, BM)
            x0, x1, x2, mq = _members(offs_m, g0, g1, g2, T, S0, S1, S2, G1, G2, GS0, GS1, GS2, PS0, PS1, PS2)
            mqd = mq[:, None] & md[None, :]
            q = _gather(Q, b, x0, x1, x2, h, sq_b, sq_0, sq_1, sq_2, sq_h, offs_d, mqd) * scale
            rows = _rows(x0, x1, x2, S1, S2, b, h, S0, H)
            do, lse, drow = _query_grads(DO, LSE, DROW, rows, offs_d, DIM, mq, mqd)
            p = _probs(q, k, lse, mq, mk)
            dv += tl.dot(tl.trans(p), do, input_precision="ieee")
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            ds = p * (dp - drow[:, None])
            dk += tl.dot(tl.trans(ds), q, input_precision="ieee")
        rows_k = _rows(y0, y1, y2, S1, S2, b, h, S0, H)
        tl.store(DK + rows_k[:, None] * DIM + offs_d[None, :], dk, mask=mkd)
        tl.store(DV + rows_k[:, None] * DIM + offs_d[None, :], dv, mask=mkd)

    @triton.jit
    def _bwd_dq_kernel(
        Q,
        K,
        V,
        DO,
        LSE,
        DROW,
        DQ,
        sq_b,
        sq_0,
        sq_1,
        sq_2,
        sq_h,
        sk_b,
        sk_0,
        sk_1,
        sk_2,
        sk_h,
        sv_b,
        sv_0,
        sv_1,
        sv_2,
        sv_h,
        S0,
        S1,
        S2,
        H,
        DIM,
        T,
        NG1,
        NG2,
        G1,
        G2,
        GS0,
        GS1,
        GS2,
        PS0,
        PS1,
        PS2,
        scale,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BD: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        b, h, g0, g1, g2 = _program(H, NG1, NG2)
        offs_d = tl.arange(0, BD)
        md = offs_d < DIM
        offs_m = pid_m * BM + tl.arange(0, BM)
        x0, x1, x2, mq = _members(offs_m, g0, g1, g2, T, S0, S1, S2, G1, G2, GS0, GS1, GS2, PS0, PS1, PS2)
        mqd = mq[:, None] & md[None, :]
        q = _gather(Q, b, x0, x1, x2, h, sq_b, sq_0, sq_1, sq_2, sq_h, offs_d, mqd) * scale
        rows = _rows(x0, x1, x2, S1, S2, b, h, S0, H)
        do, lse, drow = _query_grads(DO, LSE, DROW, rows, offs_d, DIM, mq, mqd)
        dq = tl.zeros([BM, BD], tl.float32)
        for n0 in range(0, T, BN):
            offs_n = n0 + tl.arange(0, BN)
            y0, y1, y2, mk = _members(offs_n, g0, g1, g2, T, S0, S1, S2, G1, G2, GS0, GS1, GS2, PS0, PS1, PS2)
            mkd = mk[:, None] & md[None, :]
            k = _gather(K, b, y0, y1, y2, h, sk_b, sk_0, sk_1, sk_2, sk_h, offs_d, mkd)
            v = _gather(V, b, y0, y1, y2, h, sv_b, sv_0, sv_1, sv_2, sv_h, offs_d, mkd)
            p = _probs(q, k, lse, mq, mk)
            dp = tl.dot(do, tl.trans(v), input_precision="ieee")
            dq += tl.dot(p * (dp - drow[:, None]), k, input_precision="ieee")
        tl.store(DQ + rows[:, None] * DIM + offs_d[None, :], dq * scale, mask=mqd)


def _geometry(spatial, group_size, global_scope: bool):
    """Per axis: clamped group size, groups, group step and member step (as the C++ side)."""
    g, ng, gs, ps = [], [], [], []
    for n, want in zip(spatial, group_size):
        gi = min(want, max(n, 1))
        ngi = -(-n // gi)
        g.append(gi)
        ng.append(ngi)
        gs.append(1 if global_scope else gi)
        ps.append(ngi if global_scope else 1)
    return g, ng, gs, ps


def _strides(t):
    return (t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4))


def _unit_last(t):
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


#: The largest head_dim the Triton kernels take (larger ones run on the cpu or reference backend).
MAX_HEAD_DIM = 128
_KERNELS = ("fwd", "dkdv", "dq")
#: (num_warps, num_stages) by kernel, up to BD 64 and at BD 128 (measured: the pipelined dK/dV loop spills at BD 128).
_LAUNCH = {"fwd": ((8, 3), (16, 3)), "dkdv": ((8, 3), (4, 1)), "dq": ((4, 3), (8, 3))}


def tiles(head_dim: int) -> tuple[int, int]:
    """(BM = BN, BD): BD the head_dim rounded up to a power of two (at least 16), 16 queries/keys per block.

    The products are IEEE float32 (exact, as the other backends), which ``tl.dot`` computes with FMAs; each
    thread then holds its rows' operands along the whole reduction axis, which for q k^T and dO v^T is the
    head dim. 16-row blocks (tl.dot's smallest) keep them in registers up to BD 128 (the dK/dV kernel at
    BD 128 with 4 warps and no software pipelining); larger heads run on the other backends.
    """
    return 16, max(16, next_pow2(head_dim))


def launch_config(kernel: str, dtype: torch.dtype, head_dim: int) -> LaunchConfig:
    """The launch of ``"fwd"``, ``"dkdv"`` or ``"dq"`` for q/k/v of ``dtype`` (read in place, converted on load):
    a pure function of the shapes."""
    f32 = torch.float32
    bm, bd = tiles(head_dim)
    qkv = dict(Q=dtype, K=dtype, V=dtype)
    if kernel == "fwd":
        fn, rest = _fwd_kernel, ("OUT", "LSE")
    elif kernel == "dkdv":
        fn, rest = _bwd_dkdv_kernel, ("DO", "LSE", "DROW", "DK", "DV")
    else:
        fn, rest = _bwd_dq_kernel, ("DO", "LSE", "DROW", "DQ")
    warps, stages = _LAUNCH[kernel][bd > 64]
    return make_config(
        fn,
        pointers={**qkv, **{n: f32 for n in rest}},
        floats=("scale",),
        num_warps=warps,
        num_stages=stages,
        constexprs=dict(BM=bm, BN=bm, BD=bd),
    )


def configs() -> list[LaunchConfig]:
    """Every configuration :func:`launch_config` returns on a GPU."""
    return list(
        dict.fromkeys(
            launch_config(k, dt, d) for k in _KERNELS for dt in HALF_AND_FLOAT for d in range(1, MAX_HEAD_DIM + 1)
        )
    )


def _launch(kernel, name, blocks, query, key, value, extra, group_size, global_scope, scale):
    B, S0, S1, S2, H, DIM = query.shape
    g, ng, gs, ps = _geometry((S0, S1, S2), group_size, global_scope)
    T = g[0] * g[1] * g[2]
    q, k, v = (_unit_last(t) for t in (query, key, value))
    cfg = launch_config(name, query.dtype, DIM)
    c = dict(cfg.constexprs)
    grid = (triton.cdiv(T, blocks(c["BM"], c["BN"])), ng[0] * ng[1] * ng[2], B * H)
    kernel[grid](
        q,
        k,
        v,
        *extra,
        *_strides(q),
        *_strides(k),
        *_strides(v),
        S0,
        S1,
        S2,
        H,
        DIM,
        T,
        ng[1],
        ng[2],
        g[1],
        g[2],
        *gs,
        *ps,
        float(scale),
        **cfg.launch_kwargs(),
    )


def forward(query, key, value, group_size, global_scope: bool, scale: float):
    """Returns out (float32, contiguous, query's shape) and lse (float32, [B, D, H, W, heads])."""
    out = torch.empty(query.shape, device=query.device, dtype=torch.float32)
    lse = torch.empty(query.shape[:-1], device=query.device, dtype=torch.float32)
    _launch(_fwd_kernel, "fwd", lambda bm, bn: bm, query, key, value, (out, lse), group_size, global_scope, scale)
    return out, lse


def backward(grad_out, query, key, value, lse, drow, group_size, global_scope: bool, scale: float):
    """dq, dk, dv (float32, contiguous). lse and drow = <dO, O> - dlse are float32 [B, D, H, W, heads]."""
    do = grad_out.float().contiguous()
    dq, dk, dv = (torch.empty(query.shape, device=query.device, dtype=torch.float32) for _ in range(3))
    _launch(
        _bwd_dkdv_kernel,
        "dkdv",
        lambda bm, bn: bn,
        query,
        key,
        value,
        (do, lse, drow, dk, dv),
        group_size,
        global_scope,
        scale,
    )
    _launch(
        _bwd_dq_kernel, "dq", lambda bm, bn: bm, query, key, value, (do, lse, drow, dq), group_size, global_scope, scale
    )
    return dq, dk, dv
