"""Triton kernels for the causal depthwise conv1d (the GPU path): forward, and the backward's
dL/dpre recompute and input gradient. Rows are (batch * dim) of a contiguous (batch, dim, seqlen)
float32 input; ``init`` holds the (batch * dim, width - 1) initial states; ``seq`` the (batch,
seqlen) int32 segment ids. Weight/bias gradients are reductions the caller does in torch."""

from __future__ import annotations

import itertools

import torch

from . import AVAILABLE, LaunchConfig, gpu_configs, make_config

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _pre(
        X,
        W,
        BIAS,
        INIT,
        SEQ,
        row,
        b,
        d,
        offs_t,
        mt,
        L,
        WIDTH,
        HAS_BIAS: tl.constexpr,
        HAS_INIT: tl.constexpr,
        HAS_SEQ: tl.constexpr,
        BT: tl.constexpr,
    ):
        acc = tl.zeros([BT], tl.float32)
        if HAS_BIAS:
            acc += tl.load(BIAS + d)
        if HAS_SEQ:
            my_seq = tl.load(SEQ + b * L + offs_t, mask=mt, other=0)
        for k in range(0, WIDTH):
            src = offs_t - (WIDTH - 1) + k
            inside = mt & (src >= 0)
            v = tl.load(X + row * L + src, mask=inside, other=0.0)
            if HAS_INIT:
                before = mt & (src < 0)
                v += tl.load(INIT + row * (WIDTH - 1) + (WIDTH - 1) + src, mask=before, other=0.0)
            if HAS_SEQ:
                src_seq = tl.load(SEQ + b * L + src, mask=inside, other=0)
                v = tl.where(inside & (src_seq != my_seq), 0.0, v)
            acc += tl.load(W + d * WIDTH + k) * v
        return acc

    @triton.jit
    def _fwd_kernel(
        X,
        W,
        BIAS,
        INIT,
        SEQ,
        OUT,
        D,
        L,
        WIDTH,
        HAS_BIAS: tl.constexpr,
        HAS_INIT: tl.constexpr,
        HAS_SEQ: tl.constexpr,
        SILU: tl.constexpr,
        BT: tl.constexpr,
    ):
        row = tl.program_id(1)
        b = row // D
        d = row % D
        offs_t = tl.program_id(0) * BT + tl.arange(0, BT)
        mt = offs_t < L
        pre = _pre(X, W, BIAS, INIT, SEQ, row, b, d, offs_t, mt, L, WIDTH, HAS_BIAS, HAS_INIT, HAS_SEQ, BT)
        if SILU:
            pre = pre * tl.sigmoid(pre)
        tl.store(OUT + row * L + offs_t, pre, mask=mt)

    @triton.jit
    def _grad_pre_kernel(
        X,
        W,
        BIAS,
        INIT,
        SEQ,
        DOUT,
        G,
        D,
        L,
        WIDTH,
        HAS_BIAS: tl.constexpr,
        HAS_INIT: tl.constexpr,
        HAS_SEQ: tl.constexpr,
        SILU: tl.constexpr,
        BT: tl.constexpr,
    ):
        row = tl.program_id(1)
        b = row // D
        d = row % D
        offs_t = tl.program_id(0) * BT + tl.arange(0, BT)
        mt = offs_t < L
        g = tl.load(DOUT + row * L + offs_t, mask=mt, other=0.0)
        if SILU:
            pre = _pre(X, W, BIAS, INIT, SEQ, row, b, d, offs_t, mt, L, WIDTH, HAS_BIAS, HAS_INIT, HAS_SEQ, BT)
            s = tl.sigmoid(pre)
            g = g * s * (1.0 + pre * (1.0 - s))
        tl.store(G + row * L + offs_t, g, mask=mt)

    @triton.jit
    def _dx_kernel(G, W, SEQ, DEXT, D, L, WIDTH, HAS_SEQ: tl.constexpr, BT: tl.constexpr):
        # extended positions p in [0, L + W - 1): p < W - 1 are the initial states, p = W - 1 + t is x[t]
        row = tl.program_id(1)
        b = row // D
        d = row % D
        offs_p = tl.program_id(0) * BT + tl.arange(0, BT)
        n_ext = L + WIDTH - 1
        mp = offs_p < n_ext
        src = offs_p - (WIDTH - 1)  # the input token index
        acc = tl.zeros([BT], tl.float32)
        if HAS_SEQ:
            src_seq = tl.load(SEQ + b * L + src, mask=mp & (src >= 0), other=0)
        for k in range(0, WIDTH):
            t = offs_p - k  # the output reading extended position p through tap k
            ok = mp & (t >= 0) & (t < L)
            g = tl.load(G + row * L + t, mask=ok, other=0.0)
            if HAS_SEQ:
                t_seq = tl.load(SEQ + b * L + t, mask=ok, other=0)
                g = tl.where((src >= 0) & (t_seq != src_seq), 0.0, g)
            acc += tl.load(W + d * WIDTH + k) * g
        tl.store(DEXT + row * n_ext + offs_p, acc, mask=mp)


#: Tokens per program on a GPU (16 in the interpreter).
GPU_BLOCK = 256


def _block(n: int) -> int:
    return GPU_BLOCK if gpu_configs() else 16


def launch_config(
    kernel: str, *, has_bias: bool, has_init: bool, has_seq: bool, silu: bool, gpu: bool = True
) -> LaunchConfig:
    """The launch of one kernel (``"fwd"``, ``"grad_pre"`` or ``"dx"``): a pure function of which optional
    inputs are present (all tensors are float32, seq_idx int32). ``gpu``: the GPU's tiles, else the
    interpreter's. The dL/dpre kernel recomputes the pre-activation only for silu, so without it the other
    flags are off (one variant)."""
    f32, i32 = torch.float32, torch.int32
    block = GPU_BLOCK if gpu else 16
    if kernel == "dx":
        return make_config(
            _dx_kernel,
            pointers=dict(G=f32, W=f32, SEQ=i32, DEXT=f32),
            num_warps=4,
            num_stages=3,
            constexprs=dict(HAS_SEQ=has_seq, BT=block),
        )
    if kernel == "grad_pre" and not silu:
        has_bias = has_init = has_seq = False
    fn, out = (_fwd_kernel, {"OUT": f32}) if kernel == "fwd" else (_grad_pre_kernel, {"DOUT": f32, "G": f32})
    return make_config(
        fn,
        pointers=dict(X=f32, W=f32, BIAS=f32, INIT=f32, SEQ=i32, **out),
        num_warps=4,
        num_stages=3,
        constexprs=dict(HAS_BIAS=has_bias, HAS_INIT=has_init, HAS_SEQ=has_seq, SILU=silu, BT=block),
    )


def configs() -> list[LaunchConfig]:
    """Every configuration :func:`launch_config` returns on a GPU."""
    seen: dict[LaunchConfig, None] = {}
    for kernel in ("fwd", "grad_pre", "dx"):
        for flags in itertools.product((False, True), repeat=4):
            seen[launch_config(kernel, **dict(zip(("has_bias", "has_init", "has_seq", "silu"), flags)))] = None
    return list(seen)


def forward(x, w, bias, init, seq, silu: bool):
    """x (B, D, L) float32 contiguous; w (D, W) float32; returns out (B, D, L) float32."""
    B, D, L = x.shape
    out = torch.empty_like(x)
    dummy = x.new_empty(1)
    BT = _block(L)
    cfg = launch_config(
        "fwd",
        has_bias=bias is not None,
        has_init=init is not None,
        has_seq=seq is not None,
        silu=silu,
        gpu=gpu_configs(),
    )
    _fwd_kernel[(triton.cdiv(L, BT), B * D)](
        x,
        w,
        bias if bias is not None else dummy,
        init if init is not None else dummy,
        seq if seq is not None else dummy.int(),
        out,
        D,
        L,
        w.shape[1],
        **cfg.launch_kwargs(),
    )
    return out


def backward(x, w, bias, init, seq, dout, silu: bool):
    """Returns g = dL/dpre (B, D, L) and the extended-input gradient (B, D, W - 1 + L), float32."""
    B, D, L = x.shape
    W = w.shape[1]
    dummy = x.new_empty(1)
    BT = _block(L)
    g = torch.empty_like(x)
    flags = dict(
        has_bias=bias is not None, has_init=init is not None, has_seq=seq is not None, silu=silu, gpu=gpu_configs()
    )
    _grad_pre_kernel[(triton.cdiv(L, BT), B * D)](
        x,
        w,
        bias if bias is not None else dummy,
        init if init is not None else dummy,
        seq if seq is not None else dummy.int(),
        dout,
        g,
        D,
        L,
        W,
        **launch_config("grad_pre", **flags).launch_kwargs(),
    )
    dext = x.new_empty((B, D, L + W - 1))
    _dx_kernel[(triton.cdiv(L + W - 1, BT), B * D)](
        g, w, seq if seq is not None else dummy.int(), dext, D, L, W, **launch_config("dx", **flags).launch_kwargs()
    )
    return g, dext
