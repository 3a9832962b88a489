"""Triton kernels for the fused FasterKAN layer (medkernels.ops.rswaf_kan): the GPU path.

The basis index ``k = i * G + g`` is tiled as BI channels x GP grid slots (GP = G rounded up to a power
of two, the extra slots masked), so every tile holds whole channels:

* forward: each program owns a (tokens x outputs) tile and loops over channel chunks, forming the basis
  tile in registers and feeding it to ``tl.dot`` with the matching weight slice;
* dx: each program owns (tokens x channels); it forms dL/dphi = grad_out @ weight for its tile in
  registers, multiplies by the recomputed basis derivative, sums over the grid slots into dx and writes
  its partial sums for dgrid and dinv_denominator (reduced in a fixed order by the launcher);
* dweight: each program owns (outputs x channels) and loops over tokens, recomputing the basis.

All arithmetic is float32 (inputs of other dtypes are converted on load); the basis is never stored.
"""

from __future__ import annotations

import torch

from . import AVAILABLE, HALF_AND_FLOAT, LaunchConfig, gpu_configs, make_config, next_pow2

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _basis(xv, gv, inv):
        """(tanh(a), 1 - tanh(a)^2) for a = (x - g) * inv, from e = exp(-2|a|) (no overflow); exactly 0
        past |a| = 40, as every backend (ops/rswaf_kan.py)."""
        a = (xv - gv) * inv
        e = tl.where(tl.abs(a) > 40.0, 0.0, tl.exp(-2.0 * tl.abs(a)))
        r = 1.0 / (1.0 + e)
        t = (1.0 - e) * r
        th = tl.where(a < 0, -t, t)
        return th, 4.0 * e * r * r

    @triton.jit
    def _fwd_kernel(
        X,
        GRID,
        W,
        OUT,
        T,
        I,
        O,
        G,
        inv,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BI: tl.constexpr,
        GP: tl.constexpr,
        PREC: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        mm = offs_m < T
        mn = offs_n < O
        kk = tl.arange(0, BI * GP)
        ci = kk // GP
        gi = kk % GP
        gmask = gi < G
        gv = tl.load(GRID + gi, mask=gmask, other=0.0)
        K = I * G
        acc = tl.zeros([BM, BN], tl.float32)
        for i0 in range(0, I, BI):
            ch = i0 + ci
            km = gmask & (ch < I)
            xv = tl.load(X + offs_m[:, None] * I + ch[None, :], mask=mm[:, None] & km[None, :], other=0.0)
            _, phi = _basis(xv.to(tl.float32), gv[None, :], inv)
            phi = tl.where(km[None, :], phi, 0.0)
            w = tl.load(W + offs_n[None, :] * K + (ch * G + gi)[:, None], mask=km[:, None] & mn[None, :], other=0.0)
            acc += tl.dot(phi, w.to(tl.float32), input_precision=PREC)
        tl.store(OUT + offs_m[:, None] * O + offs_n[None, :], acc, mask=mm[:, None] & mn[None, :])

    @triton.jit
    def _dx_kernel(
        DOUT,
        X,
        GRID,
        W,
        DX,
        PART_G,
        PART_I,
        T,
        I,
        O,
        G,
        inv,
        BM: tl.constexpr,
        BO: tl.constexpr,
        BI: tl.constexpr,
        GP: tl.constexpr,
        PREC: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_i = tl.program_id(1)
        offs_m = pid_m * BM + tl.arange(0, BM)
        mm = offs_m < T
        kk = tl.arange(0, BI * GP)
        ch = pid_i * BI + kk // GP
        gi = kk % GP
        km = (gi < G) & (ch < I)
        K = I * G
        dphi = tl.zeros([BM, BI * GP], tl.float32)
        for o0 in range(0, O, BO):
            offs_o = o0 + tl.arange(0, BO)
            mo = offs_o < O
            d = tl.load(DOUT + offs_m[:, None] * O + offs_o[None, :], mask=mm[:, None] & mo[None, :], other=0.0)
            w = tl.load(W + offs_o[:, None] * K + (ch * G + gi)[None, :], mask=mo[:, None] & km[None, :], other=0.0)
            dphi += tl.dot(d.to(tl.float32), w.to(tl.float32), input_precision=PREC)
        gv = tl.load(GRID + gi, mask=gi < G, other=0.0)
        xv = tl.load(X + offs_m[:, None] * I + ch[None, :], mask=mm[:, None] & km[None, :], other=0.0).to(tl.float32)
        th, phi = _basis(xv, gv[None, :], inv)
        valid = mm[:, None] & km[None, :]
        da = tl.where(valid, dphi * (-2.0 * th * phi), 0.0)
        da3 = tl.reshape(da, (BM, BI, GP))
        dx = tl.sum(da3, axis=2) * inv
        offs_c = pid_i * BI + tl.arange(0, BI)
        tl.store(DX + offs_m[:, None] * I + offs_c[None, :], dx, mask=mm[:, None] & (offs_c < I)[None, :])
        part = pid_m * tl.num_programs(1) + pid_i
        dg = tl.sum(tl.sum(da3, axis=1), axis=0)
        tl.store(PART_G + part * GP + tl.arange(0, GP), dg)
        dinv = tl.sum(tl.sum(tl.where(valid, da * (xv - gv[None, :]), 0.0), axis=1), axis=0)
        tl.store(PART_I + part, dinv)

    @triton.jit
    def _dw_kernel(
        DOUT,
        X,
        GRID,
        DW,
        T,
        I,
        O,
        G,
        inv,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BI: tl.constexpr,
        GP: tl.constexpr,
        PREC: tl.constexpr,
    ):
        pid_n = tl.program_id(0)
        pid_i = tl.program_id(1)
        offs_n = pid_n * BN + tl.arange(0, BN)
        mn = offs_n < O
        kk = tl.arange(0, BI * GP)
        ch = pid_i * BI + kk // GP
        gi = kk % GP
        km = (gi < G) & (ch < I)
        gv = tl.load(GRID + gi, mask=gi < G, other=0.0)
        acc = tl.zeros([BN, BI * GP], tl.float32)
        for t0 in range(0, T, BM):
            offs_m = t0 + tl.arange(0, BM)
            mm = offs_m < T
            xv = tl.load(X + offs_m[:, None] * I + ch[None, :], mask=mm[:, None] & km[None, :], other=0.0)
            _, phi = _basis(xv.to(tl.float32), gv[None, :], inv)
            phi = tl.where(mm[:, None] & km[None, :], phi, 0.0)
            d = tl.load(DOUT + offs_m[:, None] * O + offs_n[None, :], mask=mm[:, None] & mn[None, :], other=0.0)
            acc += tl.dot(tl.trans(d.to(tl.float32)), phi, input_precision=PREC)
        K = I * G
        tl.store(DW + offs_n[:, None] * K + (ch * G + gi)[None, :], acc, mask=mn[:, None] & km[None, :])


#: The largest grid size G the Triton kernels take (larger grids run on the cpu or reference backend): past 32 a
#: channel's grid slots alone exceed the forward's 32-column basis step (64 spilled 464 B on sm_80).
MAX_GRID = 32
#: GPU tiles (BM tokens, BN outputs, KW basis columns = BI channels x GP grid slots) with 8 warps. The float32
#: products are IEEE (exact, as the CPU kernels), which tl.dot computes with FMAs: each thread holds its rows'
#: operands along the whole reduction axis, so that axis is kept short: 32 basis columns in the forward, 32
#: outputs in dx, 16 tokens in dw (64 spilled 1-24 KB per kernel). The output tiles stay 64 x 64.
GPU_TILES = {"fwd": (64, 64, 32), "dx": (64, 32, 64), "dw": (16, 64, 64)}
_KERNELS = ("fwd", "dx", "dw")


def tiles(kernel: str, G: int, gpu: bool = True) -> tuple[int, int, int, int]:
    """(BM, BN, BI, GP) of ``kernel`` (BN is dx's BO): GP = G rounded up to a power of two (at least 4), BI whole
    channels per basis step (KW // GP, at least 1); the interpreter uses 16 x 16 tiles."""
    gp = max(4, next_pow2(G))
    bm, bn, kw = GPU_TILES[kernel] if gpu else (16, 16, 16)
    return bm, bn, max(1, kw // gp), gp


def launch_config(kernel: str, dtype: torch.dtype, G: int, gpu: bool = True) -> LaunchConfig:
    """The launch of ``"fwd"``, ``"dx"`` or ``"dw"`` for x, weight and grad_out of ``dtype`` (converted on load;
    float32 products are exact IEEE, float16/bfloat16 ones TF32): a pure function of the dtype and G."""
    f32 = torch.float32
    bm, bn, bi, gp = tiles(kernel, G, gpu)
    prec = "ieee" if dtype == f32 else "tf32"
    if kernel == "fwd":
        return make_config(
            _fwd_kernel,
            pointers=dict(X=dtype, GRID=f32, W=dtype, OUT=f32),
            floats=("inv",),
            num_warps=8,
            num_stages=3,
            constexprs=dict(BM=bm, BN=bn, BI=bi, GP=gp, PREC=prec),
        )
    if kernel == "dx":
        return make_config(
            _dx_kernel,
            pointers=dict(DOUT=dtype, X=dtype, GRID=f32, W=dtype, DX=f32, PART_G=f32, PART_I=f32),
            floats=("inv",),
            num_warps=8,
            num_stages=3,
            constexprs=dict(BM=bm, BO=bn, BI=bi, GP=gp, PREC=prec),
        )
    return make_config(
        _dw_kernel,
        pointers=dict(DOUT=dtype, X=dtype, GRID=f32, DW=f32),
        floats=("inv",),
        num_warps=8,
        num_stages=3,
        constexprs=dict(BM=bm, BN=bn, BI=bi, GP=gp, PREC=prec),
    )


def configs() -> list[LaunchConfig]:
    """Every configuration :func:`launch_config` returns on a GPU."""
    return list(
        dict.fromkeys(
            launch_config(k, dt, g) for k in _KERNELS for dt in HALF_AND_FLOAT for g in range(1, MAX_GRID + 1)
        )
    )


def forward(x, grid, inv_denominator, weight):
    """x (..., in), grid (G,) float32, inv_denominator 0-dim, weight (out, in * G) -> (..., out) in x's dtype."""
    I = x.shape[-1]
    G = grid.shape[0]
    O = weight.shape[0]
    x2 = x.reshape(-1, I).contiguous()
    T = x2.shape[0]
    out = torch.zeros((T, O), device=x.device, dtype=torch.float32)
    if T > 0 and O > 0 and I > 0:
        cfg = launch_config("fwd", x.dtype, G, gpu_configs())
        c = dict(cfg.constexprs)
        grid_ = (triton.cdiv(T, c["BM"]), triton.cdiv(O, c["BN"]))
        _fwd_kernel[grid_](
            x2,
            grid.float().contiguous(),
            weight.contiguous(),
            out,
            T,
            I,
            O,
            G,
            float(inv_denominator),
            **cfg.launch_kwargs(),
        )
    return out.to(x.dtype).reshape(*x.shape[:-1], O)


def backward(grad_out, x, grid, inv_denominator, weight, output_mask):
    """(dx, dgrid, dinv_denominator, dweight) for output_mask (x, grid, inv_denominator, weight); absent = empty."""
    need_x, need_g, need_i, need_w = (bool(m) for m in output_mask)
    I = x.shape[-1]
    G = grid.shape[0]
    O = weight.shape[0]
    x2 = x.reshape(-1, I).contiguous()
    T = x2.shape[0]
    d2 = grad_out.reshape(T, O).contiguous()
    g32 = grid.float().contiguous()
    inv = float(inv_denominator)
    w = weight.contiguous()
    dx = dgrid = dinv = dw = None
    if need_x or need_g or need_i:
        cfg = launch_config("dx", x.dtype, G, gpu_configs())
        c = dict(cfg.constexprs)
        dx32 = torch.zeros((T, I), device=x.device, dtype=torch.float32)
        nm, ni = triton.cdiv(max(T, 1), c["BM"]), triton.cdiv(max(I, 1), c["BI"])
        part_g = torch.zeros((nm * ni, c["GP"]), device=x.device, dtype=torch.float32)
        part_i = torch.zeros((nm * ni,), device=x.device, dtype=torch.float32)
        if T > 0 and I > 0:
            _dx_kernel[(nm, ni)](d2, x2, g32, w, dx32, part_g, part_i, T, I, O, G, inv, **cfg.launch_kwargs())
        dx = dx32.to(x.dtype).reshape(x.shape)
        dgrid = (part_g.sum(0)[:G] * -inv).to(grid.dtype)
        dinv = part_i.sum().to(inv_denominator.dtype)
    if need_w:
        dw32 = torch.zeros((O, I * G), device=x.device, dtype=torch.float32)
        if T > 0 and O > 0 and I > 0:
            cfg = launch_config("dw", x.dtype, G, gpu_configs())
            c = dict(cfg.constexprs)
            _dw_kernel[(triton.cdiv(O, c["BN"]), triton.cdiv(I, c["BI"]))](
                d2, x2, g32, dw32, T, I, O, G, inv, **cfg.launch_kwargs()
            )
        dw = dw32.to(weight.dtype)

    def pick(t, need, like):
        return t if need else like.new_empty((0,))

    return (
        pick(dx, need_x, x),
        pick(dgrid, need_g, grid),
        pick(dinv, need_i, inv_denominator),
        pick(dw, need_w, weight),
    )
