"""Triton kernels for furthest point sampling and k nearest neighbours (the GPU path).

Distances are computed as the CPU kernels and the references compute them (channel order, no fused
multiply-add: ``enable_fp_fusion=False``), so the indices agree across backends.

* FPS: one program per cloud; each step sweeps the cloud in blocks, keeping the running minimum
  distance in a global buffer, and takes the block maxima's first maximum (NaN as torch does: minimum
  propagates it, argmax takes the first NaN).
* kNN: one program per query; a candidate is one int64 key (the distance's bits above the point's
  index, so keys order by distance, then index; NaN as one canonical NaN, after +inf). Per block of points: sort the block's keys, keep the
  k smallest, merge with the running best (minimum against the reversed block, then a sort: a bitonic
  merge).
"""

from __future__ import annotations

import torch

from . import AVAILABLE

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _sqdist(q_ptr, p_ptr, offs, mask, spn, C: tl.constexpr):
        d = tl.zeros(offs.shape, tl.float32)
        for c in tl.static_range(C):
            diff = tl.load(p_ptr + offs * spn + c, mask=mask, other=0.0).to(tl.float32) - tl.load(q_ptr + c).to(
                tl.float32)
            if c == 0:
                d = diff * diff
            else:
                d = d + diff * diff
        return d

    @triton.jit
    def _fps_kernel(X, DIST, OUT, LEN, N, npoint, start, C: tl.constexpr, HAS_LEN: tl.constexpr,
                    BLOCK: tl.constexpr):
        b = tl.program_id(0)
        n = N
        if HAS_LEN:
            n = tl.load(LEN + b).to(tl.int32)
        x = X + b.to(tl.int64) * N * C
        dist = DIST + b.to(tl.int64) * N
        out = OUT + b.to(tl.int64) * npoint
        offs0 = tl.arange(0, BLOCK)
        for j0 in range(0, n, BLOCK):
            offs = j0 + offs0
            tl.store(dist + offs, tl.full([BLOCK], float("inf"), tl.float32), mask=offs < n)
        last = start
        tl.store(out, last.to(tl.int64))
        for i in range(1, npoint):
            # torch's NaN rules (as the textbook loop): minimum propagates NaN, argmax takes the first NaN
            best_val = -1.0
            best_idx = 0
            best_nan = 0
            for j0 in range(0, n, BLOCK):
                offs = j0 + offs0
                mask = offs < n
                d = _sqdist(x + last * C, x, offs, mask, C, C)
                nd = tl.minimum(tl.load(dist + offs, mask=mask, other=0.0), d, propagate_nan=tl.PropagateNan.ALL)
                tl.store(dist + offs, nd, mask=mask)
                isnan = mask & (nd != nd)
                first_nan = tl.min(tl.where(isnan, offs, 0x7FFFFFFF), 0)
                nd = tl.where(mask & (nd == nd), nd, -1.0)
                m = tl.max(nd, 0)
                a = tl.argmax(nd, 0, tie_break_left=True)
                block_nan = first_nan < 0x7FFFFFFF
                take_nan = block_nan & (best_nan == 0)
                take = (best_nan == 0) & (first_nan == 0x7FFFFFFF) & (m > best_val)
                best_idx = tl.where(take_nan, first_nan, tl.where(take, j0 + a, best_idx))
                best_val = tl.where(take, m, best_val)
                best_nan = tl.where(block_nan, 1, best_nan)
            last = best_idx
            tl.store(out + i, last.to(tl.int64))

    @triton.jit
    def _knn_kernel(Q, P, D, I, QLEN, PLEN, M, N, k, C: tl.constexpr, KP: tl.constexpr, BN: tl.constexpr,
                    HAS_QLEN: tl.constexpr, HAS_PLEN: tl.constexpr):
        row = tl.program_id(0)
        b = row // M
        m = row % M
        n = N
        if HAS_PLEN:
            n = tl.load(PLEN + b).to(tl.int32)
        mq = M
        if HAS_QLEN:
            mq = tl.load(QLEN + b).to(tl.int32)
        big = 0x7FFFFFFFFFFFFFFF
        best = tl.full([KP], big, tl.int64)
        offs0 = tl.arange(0, BN)
        q = Q + row.to(tl.int64) * C
        p = P + b.to(tl.int64) * N * C
        if m < mq:
            for j0 in range(0, n, BN):
                offs = j0 + offs0
                mask = offs < n
                d = _sqdist(q, p, offs, mask, C, C)
                # non-negative floats order as their bits; one canonical NaN above +inf (a stable sort's order)
                bits = tl.where(d != d, 0x7FC00000, d.to(tl.int32, bitcast=True))
                key = (bits.to(tl.int64) << 32) | offs.to(tl.int64)
                key = tl.sort(tl.where(mask, key, big))
                top = tl.min(tl.reshape(key, [BN // KP, KP]), 0)  # the KP smallest, sorted
                best = tl.sort(tl.minimum(best, tl.flip(top, 0)))
        kk = tl.arange(0, KP)
        dist = (best >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        idx = best & 0xFFFFFFFF
        pad = m >= mq
        dist = tl.where(pad, 0.0, dist)
        idx = tl.where(pad, -1, idx)
        tl.store(D + row.to(tl.int64) * k + kk, dist, mask=kk < k)
        tl.store(I + row.to(tl.int64) * k + kk, idx, mask=kk < k)


def furthest_point_sample(xyz, npoint, lengths, start_idx):
    """xyz (B, N, C) -> (B, npoint) int64 (lengths (B,) int64 or None)."""
    B, N, C = xyz.shape
    out = torch.empty((B, npoint), dtype=torch.int64, device=xyz.device)
    if B == 0:
        return out
    x = xyz.contiguous()
    dist = torch.empty((B, N), dtype=torch.float32, device=xyz.device)
    has_len = lengths is not None
    lens = lengths.contiguous() if has_len else out
    block = max(16, min(1024, triton.next_power_of_2(N)))
    _fps_kernel[(B,)](x, dist, out, lens, N, npoint, start_idx, C=C, HAS_LEN=has_len, BLOCK=block,
                      enable_fp_fusion=False)
    return out


def knn(query, points, k, query_lengths, lengths):
    """query (B, M, C), points (B, N, C) -> (dists (B, M, k) in query's dtype, idx (B, M, k) int64)."""
    B, M, C = query.shape
    N = points.shape[1]
    dists = torch.empty((B, M, k), dtype=torch.float32, device=query.device)
    idx = torch.empty((B, M, k), dtype=torch.int64, device=query.device)
    if B * M == 0:
        return dists.to(query.dtype), idx
    kp = max(2, triton.next_power_of_2(k))
    bn = max(kp, 128)
    has_q, has_p = query_lengths is not None, lengths is not None
    _knn_kernel[(B * M,)](query.contiguous(), points.contiguous(), dists, idx,
                          query_lengths.contiguous() if has_q else idx, lengths.contiguous() if has_p else idx,
                          M, N, k, C=C, KP=kp, BN=bn, HAS_QLEN=has_q, HAS_PLEN=has_p, enable_fp_fusion=False)
    return dists.to(query.dtype), idx
