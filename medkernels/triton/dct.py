"""Triton kernel for the separable 2D transform behind dct2d / idct2d (the GPU path).

``out[b] = mh @ x[b] @ mw^T`` in two launches of one kernel that applies a basis along the last axis
and writes the result transposed: ``t[b] = (x[b] @ mw^T)^T``, then ``out[b] = (t[b] @ mh^T)^T``. Each
program computes one (rows x columns) tile with ``tl.dot`` in IEEE float32.
"""

from __future__ import annotations

import torch

from . import AVAILABLE, LaunchConfig, make_config, next_pow2

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _apply_t_kernel(X, M, OUT, R, K, J, BR: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr):
        """out[b, j, r] = sum_k x[b, r, k] * m[j, k]."""
        pid_r = tl.program_id(0)
        pid_j = tl.program_id(1)
        b = tl.program_id(2)
        offs_r = pid_r * BR + tl.arange(0, BR)
        offs_j = pid_j * BJ + tl.arange(0, BJ)
        mr = offs_r < R
        mj = offs_j < J
        acc = tl.zeros([BR, BJ], tl.float32)
        for k0 in range(0, K, BK):
            offs_k = k0 + tl.arange(0, BK)
            mk = offs_k < K
            x = tl.load(
                X + b * R * K + offs_r[:, None] * K + offs_k[None, :], mask=mr[:, None] & mk[None, :], other=0.0
            )
            m = tl.load(M + offs_j[None, :] * K + offs_k[:, None], mask=mk[:, None] & mj[None, :], other=0.0)
            acc += tl.dot(x, m, input_precision="ieee")
        tl.store(OUT + b * J * R + offs_j[None, :] * R + offs_r[:, None], acc, mask=mr[:, None] & mj[None, :])


#: Tile sides: a power of two in [16, 64] fitting the axis; the reduction step BK is fixed (launch_config).
BLOCKS = (16, 32, 64)
BK = 16


def _block(n: int) -> int:
    return max(BLOCKS[0], min(BLOCKS[-1], next_pow2(n)))


def launch_config(R: int, K: int, J: int) -> LaunchConfig:
    """The launch of ``out[b, j, r] = sum_k x[b, r, k] m[j, k]`` (all float32): a pure function of the sizes.
    The products are IEEE float32, which ``tl.dot`` computes with FMAs, each thread holding its rows' operands
    along the whole reduction step: 16 keeps a 64 x 64 tile in registers (a step of 64 spilled 24 B on sm_90)."""
    f32 = torch.float32
    return make_config(
        _apply_t_kernel,
        pointers=dict(X=f32, M=f32, OUT=f32),
        num_warps=4,
        num_stages=3,
        constexprs=dict(BR=_block(R), BJ=_block(J), BK=BK),
    )


def configs() -> list[LaunchConfig]:
    """Every configuration :func:`launch_config` returns (the same on a GPU and in the interpreter)."""
    return list(dict.fromkeys(launch_config(r, 1, j) for r in BLOCKS for j in BLOCKS))


def _apply_t(x, m):
    """x (images, R, K), m (J, K) -> (images, J, R) float32."""
    images, R, K = x.shape
    J = m.shape[0]
    out = torch.empty((images, J, R), device=x.device, dtype=torch.float32)
    cfg = launch_config(R, K, J)
    c = dict(cfg.constexprs)
    grid = (triton.cdiv(R, c["BR"]), triton.cdiv(J, c["BJ"]), images)
    _apply_t_kernel[grid](x, m, out, R, K, J, **cfg.launch_kwargs())
    return out


def separable2d(x, mh, mw):
    """x (..., h, w) float32, mh (oh, h), mw (ow, w) -> (..., oh, ow) float32."""
    h, w = x.shape[-2:]
    xi = x.reshape(-1, h, w).contiguous()
    if xi.shape[0] == 0:
        return x.new_zeros((*x.shape[:-2], mh.shape[0], mw.shape[0]))
    t = _apply_t(xi, mw.float().contiguous())  # (images, ow, h)
    out = _apply_t(t, mh.float().contiguous())  # (images, oh, ow)
    return out.reshape(*x.shape[:-2], mh.shape[0], mw.shape[0])
