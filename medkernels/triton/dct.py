"""Triton kernel for the separable 2D transform behind dct2d / idct2d (the GPU path).

``out[b] = mh @ x[b] @ mw^T`` in two launches of one kernel that applies a basis along the last axis
and writes the result transposed: ``t[b] = (x[b] @ mw^T)^T``, then ``out[b] = (t[b] @ mh^T)^T``. Each
program computes one (rows x columns) tile with ``tl.dot`` in IEEE float32.
"""

from __future__ import annotations

import torch

from . import AVAILABLE

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
            x = tl.load(X + b * R * K + offs_r[:, None] * K + offs_k[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
            m = tl.load(M + offs_j[None, :] * K + offs_k[:, None], mask=mk[:, None] & mj[None, :], other=0.0)
            acc += tl.dot(x, m, input_precision="ieee")
        tl.store(OUT + b * J * R + offs_j[None, :] * R + offs_r[:, None], acc, mask=mr[:, None] & mj[None, :])


def _block(n: int) -> int:
    return max(16, min(64, triton.next_power_of_2(n)))


def _apply_t(x, m):
    """x (images, R, K), m (J, K) -> (images, J, R) float32."""
    images, R, K = x.shape
    J = m.shape[0]
    out = torch.empty((images, J, R), device=x.device, dtype=torch.float32)
    BR, BJ, BK = _block(R), _block(J), _block(K)
    grid = (triton.cdiv(R, BR), triton.cdiv(J, BJ), images)
    _apply_t_kernel[grid](x, m, out, R, K, J, BR=BR, BJ=BJ, BK=BK)
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
