"""Triton kernels for the selective scan (the GPU path), forward and backward.

One program per (batch, channel) row walks the sequence in chunks of ``BL`` tokens. In a chunk the
pairs (exp(dt A), dt u B) are combined with ``tl.associative_scan`` under
``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)`` and the state entering the chunk is carried in, so the
(batch, dim, seqlen, dstate) state never reaches memory; the state before every chunk is saved
(the same checkpoints as the CPU kernel). The backward recomputes each chunk from its checkpoint
and runs the adjoint recurrence as a reverse scan. Variable dB/dC accumulate with atomics (their
last bits depend on the order); everything else is written once.

Launch configurations (issue 12): only the tile sizes, B/C's kind (fixed or variable) and the storage dtype
are compile-time; the optional inputs (D, z, delta_bias, the initial state, the last state's gradient) and
the softplus are run-time bool flags, so a GPU compiles 4 variants per tile and dtype instead of 128.
"""

from __future__ import annotations

import torch

from . import AVAILABLE, HALF_AND_FLOAT, LaunchConfig, gpu_configs, make_config, next_pow2

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _combine(a1, b1, a2, b2):
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _dt_chunk(DELTA, BIAS, row_delta, d, offs_t, mt, HAS_BIAS, SOFTPLUS):
        raw = tl.load(DELTA + row_delta + offs_t, mask=mt, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw += tl.load(BIAS + d)
        dt = raw
        if SOFTPLUS:
            dt = tl.where(raw <= 20.0, tl.log(1.0 + tl.exp(raw)), raw)
        return raw, dt

    @triton.jit
    def _bc_tile(
        X,
        b,
        d,
        DIM,
        G,
        N,
        s_b,
        s_g,
        s_n,
        s_l,
        offs_n,
        mn,
        offs_t,
        m2,
        VAR: tl.constexpr,
        BL: tl.constexpr,
        BN: tl.constexpr,
    ):
        """B or C over a chunk as a (BL, BN) float32 tile: loaded per token when variable (with groups),
        the fixed (dim, N) row broadcast otherwise."""
        if VAR:
            base = X + b * s_b + (d // (DIM // G)) * s_g
            tile = tl.load(base + offs_n[None, :] * s_n + offs_t[:, None] * s_l, mask=m2, other=0.0).to(tl.float32)
        else:
            row = tl.load(X + d * N + offs_n, mask=mn, other=0.0)
            tile = row[None, :] + tl.zeros([BL, BN], tl.float32)
        return tile

    @triton.jit
    def _chunk_inputs(
        U,
        DELTA,
        BIAS,
        B,
        C,
        a_row,
        b,
        d,
        c,
        L,
        DIM,
        N,
        GB,
        GC,
        su_b,
        su_d,
        sd_b,
        sd_d,
        sB_b,
        sB_g,
        sB_n,
        sB_l,
        sC_b,
        sC_g,
        sC_n,
        sC_l,
        offs_n,
        mn,
        VAR_B: tl.constexpr,
        VAR_C: tl.constexpr,
        HAS_BIAS,
        SOFTPLUS,
        BL: tl.constexpr,
        BN: tl.constexpr,
    ):
        """Chunk ``c`` of one row: token offsets and masks, u, raw and activated dt, the B/C tiles and
        the scan pairs (da, dbu) = (exp(dt A), dt u B); padding is the identity (1, 0)."""
        offs_t = c * BL + tl.arange(0, BL)
        mt = offs_t < L
        m2 = mt[:, None] & mn[None, :]
        u = tl.load(U + b * su_b + d * su_d + offs_t, mask=mt, other=0.0).to(tl.float32)
        raw, dt = _dt_chunk(DELTA, BIAS, b * sd_b + d * sd_d, d, offs_t, mt, HAS_BIAS, SOFTPLUS)
        bt = _bc_tile(B, b, d, DIM, GB, N, sB_b, sB_g, sB_n, sB_l, offs_n, mn, offs_t, m2, VAR_B, BL, BN)
        ct = _bc_tile(C, b, d, DIM, GC, N, sC_b, sC_g, sC_n, sC_l, offs_n, mn, offs_t, m2, VAR_C, BL, BN)
        da = tl.where(m2, tl.exp(dt[:, None] * a_row[None, :]), 1.0)
        dbu = tl.where(m2, (dt * u)[:, None] * bt, 0.0)
        return offs_t, mt, m2, u, raw, dt, bt, ct, da, dbu

    @triton.jit
    def _fwd_kernel(
        U,
        DELTA,
        A,
        B,
        C,
        D,
        Z,
        BIAS,
        INIT,
        OUT,
        LAST,
        CKPT,
        L,
        DIM,
        N,
        NCH,
        GB,
        GC,
        su_b,
        su_d,
        sd_b,
        sd_d,
        sz_b,
        sz_d,
        sB_b,
        sB_g,
        sB_n,
        sB_l,
        sC_b,
        sC_g,
        sC_n,
        sC_l,
        HAS_D,
        HAS_Z,
        HAS_BIAS,
        HAS_INIT,
        SOFTPLUS,
        VAR_B: tl.constexpr,
        VAR_C: tl.constexpr,
        BL: tl.constexpr,
        BN: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // DIM
        d = pid % DIM
        offs_n = tl.arange(0, BN)
        mn = offs_n < N
        a_row = tl.load(A + d * N + offs_n, mask=mn, other=0.0)
        d_skip = tl.load(D + d, mask=HAS_D, other=0.0)
        h = tl.load(INIT + pid * N + offs_n, mask=mn & HAS_INIT, other=0.0)
        for c in range(0, NCH):
            tl.store(CKPT + (pid * NCH + c) * N + offs_n, h, mask=mn)
            offs_t, mt, m2, u, raw, dt, bt, ct, da, dbu = _chunk_inputs(
                U,
                DELTA,
                BIAS,
                B,
                C,
                a_row,
                b,
                d,
                c,
                L,
                DIM,
                N,
                GB,
                GC,
                su_b,
                su_d,
                sd_b,
                sd_d,
                sB_b,
                sB_g,
                sB_n,
                sB_l,
                sC_b,
                sC_g,
                sC_n,
                sC_l,
                offs_n,
                mn,
                VAR_B,
                VAR_C,
                HAS_BIAS,
                SOFTPLUS,
                BL,
                BN,
            )
            acum, hloc = tl.associative_scan((da, dbu), 0, _combine)
            hs = acum * h[None, :] + hloc
            y = tl.sum(hs * ct, axis=1) + d_skip * u
            if HAS_Z:
                z = tl.load(Z + b * sz_b + d * sz_d + offs_t, mask=mt, other=0.0).to(tl.float32)
                y = y * z * tl.sigmoid(z)
            tl.store(OUT + pid * L + offs_t, y, mask=mt)
            # the padded tail rows carry the state unchanged (a = 1, b = 0): the last row is the state
            h = tl.sum(tl.where((tl.arange(0, BL) == BL - 1)[:, None], hs, 0.0), axis=0)
        tl.store(LAST + pid * N + offs_n, h, mask=mn)

    @triton.jit
    def _bwd_kernel(
        U,
        DELTA,
        A,
        B,
        C,
        D,
        Z,
        BIAS,
        CKPT,
        GOUT,
        GLAST,
        DU,
        DDELTA,
        DZ,
        DA_PART,
        DB,
        DC,
        DD_PART,
        DBIAS_PART,
        DINIT,
        L,
        DIM,
        N,
        NCH,
        GB,
        GC,
        su_b,
        su_d,
        sd_b,
        sd_d,
        sz_b,
        sz_d,
        sg_b,
        sg_d,
        sB_b,
        sB_g,
        sB_n,
        sB_l,
        sC_b,
        sC_g,
        sC_n,
        sC_l,
        HAS_D,
        HAS_Z,
        HAS_BIAS,
        HAS_GLAST,
        SOFTPLUS,
        VAR_B: tl.constexpr,
        VAR_C: tl.constexpr,
        BL: tl.constexpr,
        BN: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // DIM
        d = pid % DIM
        offs_n = tl.arange(0, BN)
        mn = offs_n < N
        a_row = tl.load(A + d * N + offs_n, mask=mn, other=0.0)
        gb_idx = b * GB + d // (DIM // GB)  # the (batch, group) row of a variable dB / dC
        gc_idx = b * GC + d // (DIM // GC)
        d_skip = tl.load(D + d, mask=HAS_D, other=0.0)
        carry = tl.load(GLAST + pid * N + offs_n, mask=mn & HAS_GLAST, other=0.0)  # dL/dh_{L-1} beyond the outputs
        g_a = tl.zeros([BN], tl.float32)
        g_bfix = tl.zeros([BN], tl.float32)
        g_cfix = tl.zeros([BN], tl.float32)
        g_d = 0.0
        g_bias = 0.0
        for cc in range(0, NCH):
            c = NCH - 1 - cc
            offs_t, mt, m2, u, raw, dt, bt, ct, da, dbu = _chunk_inputs(
                U,
                DELTA,
                BIAS,
                B,
                C,
                a_row,
                b,
                d,
                c,
                L,
                DIM,
                N,
                GB,
                GC,
                su_b,
                su_d,
                sd_b,
                sd_d,
                sB_b,
                sB_g,
                sB_n,
                sB_l,
                sC_b,
                sC_g,
                sC_n,
                sC_l,
                offs_n,
                mn,
                VAR_B,
                VAR_C,
                HAS_BIAS,
                SOFTPLUS,
                BL,
                BN,
            )
            h0 = tl.load(CKPT + (pid * NCH + c) * N + offs_n, mask=mn, other=0.0)
            acum, hloc = tl.associative_scan((da, dbu), 0, _combine)
            hs = acum * h0[None, :] + hloc
            gout = tl.load(GOUT + b * sg_b + d * sg_d + offs_t, mask=mt, other=0.0).to(tl.float32)
            gy = gout
            if HAS_Z:
                z = tl.load(Z + b * sz_b + d * sz_d + offs_t, mask=mt, other=0.0).to(tl.float32)
                sz = tl.sigmoid(z)
                o = tl.sum(hs * ct, axis=1) + d_skip * u
                tl.store(DZ + pid * L + offs_t, gout * o * sz * (1.0 + z * (1.0 - sz)), mask=mt)
                gy = gout * z * sz
            g_d += tl.sum(tl.where(mt, gy * u, 0.0), axis=0)
            # adjoint: g_t = gy_t C_t + dA_{t+1} g_{t+1}; the step after the chunk comes in through `carry`
            _, dt_next = _dt_chunk(
                DELTA, BIAS, b * sd_b + d * sd_d, d, offs_t + 1, mt & (offs_t + 1 < L), HAS_BIAS, SOFTPLUS
            )
            is_last = (offs_t == c * BL + BL - 1) | (offs_t == L - 1)
            a_next = tl.where(is_last[:, None] | ~m2, 0.0, tl.exp(dt_next[:, None] * a_row[None, :]))
            b_adj = tl.where(m2, gy[:, None] * ct, 0.0) + tl.where(is_last[:, None] & m2, carry[None, :], 0.0)
            _, g = tl.associative_scan((a_next, b_adj), 0, _combine, reverse=True)
            x = g * (hs - dbu)  # g_t * dA_t * h_{t-1}
            g_a += tl.sum(x * dt[:, None], axis=0)
            s_b = tl.sum(g * bt, axis=1)
            gdt = tl.sum(x * a_row[None, :], axis=1) + u * s_b
            tl.store(DU + pid * L + offs_t, gy * d_skip + dt * s_b, mask=mt)
            if SOFTPLUS:
                gdt = tl.where(raw <= 20.0, gdt * tl.sigmoid(raw), gdt)
            gdt = tl.where(mt, gdt, 0.0)
            g_bias += tl.sum(gdt, axis=0)
            tl.store(DDELTA + pid * L + offs_t, gdt, mask=mt)
            gbt = g * (dt * u)[:, None]
            gct = gy[:, None] * hs
            if VAR_B:
                tl.atomic_add(DB + (gb_idx * N + offs_n[None, :]) * L + offs_t[:, None], gbt, mask=m2)
            else:
                g_bfix += tl.sum(tl.where(m2, gbt, 0.0), axis=0)
            if VAR_C:
                tl.atomic_add(DC + (gc_idx * N + offs_n[None, :]) * L + offs_t[:, None], gct, mask=m2)
            else:
                g_cfix += tl.sum(tl.where(m2, gct, 0.0), axis=0)
            first = offs_t == c * BL
            carry = tl.sum(tl.where(first[:, None], g * da, 0.0), axis=0)
        tl.store(DINIT + pid * N + offs_n, carry, mask=mn)
        tl.store(DA_PART + (pid * 3) * N + offs_n, g_a, mask=mn)
        tl.store(DA_PART + (pid * 3 + 1) * N + offs_n, g_bfix, mask=mn)
        tl.store(DA_PART + (pid * 3 + 2) * N + offs_n, g_cfix, mask=mn)
        tl.store(DD_PART + pid, g_d)
        tl.store(DBIAS_PART + pid, g_bias)


#: The largest dstate the Triton scan takes; larger states run on the CUDA kernel (up to 256) or elsewhere. The
#: checkpoints every BL = 1024 / BN tokens take batch * dim * seqlen * N / BL floats: 4 per token and channel at 64.
MAX_STATE = 64
_FLOAT32 = torch.float32


def state_block(dstate: int) -> int:
    """BN, the state axis' tile: a power of two, at least 16 (smaller states are masked)."""
    return max(16, next_pow2(dstate))


def gpu_chunk_len(dstate: int) -> int:
    """BL on a GPU: (BL, BN) tiles of 1024 elements, so 64 tokens up to dstate 16, 16 at dstate 64. The
    backward keeps about eight such float32 tiles live; at 1024 elements they fit 4 warps' registers (64 x 64
    tiles spilled 1.8 KB, see scripts/gpu_compile_check.py)."""
    return 1024 // state_block(dstate)


def chunk_len(dstate: int = 1) -> int:
    """Tokens between saved states: :func:`gpu_chunk_len` with the GPU's tiles, 16 in the interpreter."""
    return gpu_chunk_len(dstate) if gpu_configs() else 16


def launch_config(
    backward: bool, dtype: torch.dtype, dstate: int, chunk: int, var_b: bool, var_c: bool
) -> LaunchConfig:
    """The launch of the forward (or backward) kernel: a pure function of the shapes.

    Args:
        backward: the backward kernel instead of the forward one.
        dtype: u's storage dtype (delta, z, grad_out and variable B/C share it; the kernel converts on load).
        dstate: N.
        chunk: tokens per chunk (BL), from :func:`chunk_len`.
        var_b: B is variable (batch, [groups,] N, L) rather than fixed (dim, N) float32.
        var_c: the same for C.

    Returns:
        The :class:`~medkernels.triton.LaunchConfig`.
    """
    kernel = _bwd_kernel if backward else _fwd_kernel
    if backward:
        names = (
            "U",
            "DELTA",
            "A",
            "B",
            "C",
            "D",
            "Z",
            "BIAS",
            "CKPT",
            "GOUT",
            "GLAST",
            "DU",
            "DDELTA",
            "DZ",
            "DA_PART",
            "DB",
            "DC",
            "DD_PART",
            "DBIAS_PART",
            "DINIT",
        )
        flags = ("HAS_D", "HAS_Z", "HAS_BIAS", "HAS_GLAST", "SOFTPLUS")
        stored = {"U", "DELTA", "Z", "GOUT"}
    else:
        names = ("U", "DELTA", "A", "B", "C", "D", "Z", "BIAS", "INIT", "OUT", "LAST", "CKPT")
        flags = ("HAS_D", "HAS_Z", "HAS_BIAS", "HAS_INIT", "SOFTPLUS")
        stored = {"U", "DELTA", "Z"}
    stored |= {"B"} if var_b else set()
    stored |= {"C"} if var_c else set()
    pointers = {n: dtype if n in stored else _FLOAT32 for n in names}
    return make_config(
        kernel,
        pointers=pointers,
        flags=flags,
        num_warps=4,
        num_stages=3,
        constexprs=dict(VAR_B=var_b, VAR_C=var_c, BL=chunk, BN=state_block(dstate)),
    )


def configs() -> list[LaunchConfig]:
    """Every configuration :func:`launch_config` returns on a GPU (the chunk from :func:`gpu_chunk_len`)."""
    seen: dict[LaunchConfig, None] = {}
    for backward in (False, True):
        for dtype in HALF_AND_FLOAT:
            for var_b in (False, True):
                for var_c in (False, True):
                    for n in range(1, MAX_STATE + 1):
                        seen[launch_config(backward, dtype, n, gpu_chunk_len(n), var_b, var_c)] = None
    return list(seen)


def _bc_strides(t):
    """(batch, group, n, l) strides of a variable B/C (3-D is one group), or zeros for fixed."""
    if t.dim() == 2:
        return (0, 0, 0, 0), 1
    t4 = t.unsqueeze(1) if t.dim() == 3 else t
    return tuple(t4.stride()), t4.shape[1]


def forward(u, delta, A, B, C, D, z, bias, init, softplus: bool, chunk: int):
    """Returns out (batch, dim, L) float32, last state (batch, dim, N) and checkpoints (batch, dim, chunks, N)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    nch = triton.cdiv(L, chunk)
    out = torch.empty((batch, dim, L), device=u.device, dtype=torch.float32)
    last = torch.empty((batch, dim, N), device=u.device, dtype=torch.float32)
    ckpt = torch.empty((batch, dim, nch, N), device=u.device, dtype=torch.float32)
    dummy = out.new_empty(1)
    sB, gB = _bc_strides(B)
    sC, gC = _bc_strides(C)
    zs = (z.stride(0), z.stride(1)) if z is not None else (0, 0)
    cfg = launch_config(False, u.dtype, N, chunk, B.dim() > 2, C.dim() > 2)
    _fwd_kernel[(batch * dim,)](
        u,
        delta,
        A,
        B,
        C,
        D if D is not None else dummy,
        z if z is not None else u.new_empty(1),
        bias if bias is not None else dummy,
        init if init is not None else dummy,
        out,
        last,
        ckpt,
        L,
        dim,
        N,
        nch,
        gB,
        gC,
        u.stride(0),
        u.stride(1),
        delta.stride(0),
        delta.stride(1),
        *zs,
        *sB,
        *sC,
        D is not None,
        z is not None,
        bias is not None,
        init is not None,
        bool(softplus),
        **cfg.launch_kwargs(),
    )
    return out, last, ckpt


def backward(gout, glast, u, delta, A, B, C, D, z, bias, ckpt, softplus: bool, chunk: int):
    """Returns du, ddelta, dz (batch, dim, L); dB, dC (float32, B/C layout with groups) or per-row
    fixed partials; per-row partials of dA, dD, ddelta_bias; dinitial (batch, dim, N)."""
    batch, dim, L = u.shape
    N = A.shape[1]
    nch = ckpt.shape[2]
    f32 = dict(device=u.device, dtype=torch.float32)
    du = torch.empty((batch, dim, L), **f32)
    ddelta = torch.empty((batch, dim, L), **f32)
    dz = torch.empty((batch, dim, L), **f32) if z is not None else du.new_empty(1)
    sB, gB = _bc_strides(B)
    sC, gC = _bc_strides(C)
    dB = torch.zeros((batch, gB, N, L), **f32) if B.dim() > 2 else du.new_empty(1)
    dC = torch.zeros((batch, gC, N, L), **f32) if C.dim() > 2 else du.new_empty(1)
    parts = torch.empty((batch * dim, 3, N), **f32)
    dd = torch.empty((batch * dim,), **f32)
    dbias = torch.empty((batch * dim,), **f32)
    dinit = torch.empty((batch, dim, N), **f32)
    dummy = du.new_empty(1)
    zs = (z.stride(0), z.stride(1)) if z is not None else (0, 0)
    cfg = launch_config(True, u.dtype, N, chunk, B.dim() > 2, C.dim() > 2)
    _bwd_kernel[(batch * dim,)](
        u,
        delta,
        A,
        B,
        C,
        D if D is not None else dummy,
        z if z is not None else u.new_empty(1),
        bias if bias is not None else dummy,
        ckpt,
        gout,
        glast if glast is not None else dummy,
        du,
        ddelta,
        dz,
        parts,
        dB,
        dC,
        dd,
        dbias,
        dinit,
        L,
        dim,
        N,
        nch,
        gB,
        gC,
        u.stride(0),
        u.stride(1),
        delta.stride(0),
        delta.stride(1),
        *zs,
        gout.stride(0),
        gout.stride(1),
        *sB,
        *sC,
        D is not None,
        z is not None,
        bias is not None,
        glast is not None,
        bool(softplus),
        **cfg.launch_kwargs(),
    )
    return du, ddelta, dz, dB, dC, parts.view(batch, dim, 3, N), dd.view(batch, dim), dbias.view(batch, dim), dinit
