"""Triton kernels for furthest point sampling and k nearest neighbours (the GPU path).

Distances are computed as the CPU kernels and the references compute them (channel order, no fused
multiply-add: ``enable_fp_fusion=False``), so the indices agree across backends.

* FPS: one program per cloud; each step sweeps the cloud in blocks, keeping the running minimum
  distance in a global buffer, and takes the block maxima's first maximum (NaN as torch does: minimum
  propagates it, argmax takes the first NaN).
* kNN: one program per query; a candidate is one int64 key (the distance's bits above the point's
  index, so keys order by distance, then index; NaN as one canonical NaN, after +inf). Per block of
  points: sort the block's keys, keep the k smallest, merge with the running best (minimum against the
  reversed block, then a sort: a bitonic merge).
"""

from __future__ import annotations

import torch

from . import AVAILABLE, HALF_AND_FLOAT, LaunchConfig, make_config, next_pow2

if AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _sqdist(q_ptr, p_ptr, offs, mask, spn, C):
        # 0 + diff * diff is diff * diff exactly (a square is +0, positive, +inf or NaN), and there is no fused
        # multiply-add (enable_fp_fusion=False): the channel-ordered sum of the references, for any C
        d = tl.zeros(offs.shape, tl.float32)
        for c in range(0, C):
            diff = tl.load(p_ptr + offs * spn + c, mask=mask, other=0.0).to(tl.float32) - tl.load(q_ptr + c).to(
                tl.float32
            )
            d = d + diff * diff
        return d

    @triton.jit
    def _fps_kernel(X, DIST, OUT, LEN, N, npoint, start, C, HAS_LEN, BLOCK: tl.constexpr):
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
    def _knn_kernel(Q, P, D, I, QLEN, PLEN, M, N, k, C, HAS_QLEN, HAS_PLEN, KP: tl.constexpr, BN: tl.constexpr):
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


#: Points per FPS sweep step; the kNN keeps KP >= k candidates (a power of two, 16 to MAX_K) per query and
#: sorts blocks of max(KP, 128) points.
FPS_BLOCK = 1024
MAX_K = 256


def launch_config(kernel: str, dtype: torch.dtype, k: int = 1) -> LaunchConfig:
    """The launch of ``"fps"`` or ``"knn"`` for points of ``dtype`` (converted on load): a pure function of the
    dtype and k. The channel count and the optional lengths are run-time arguments; no fused multiply-add, so
    the distances round as the CPU kernels' and the references'."""
    f32, i64 = torch.float32, torch.int64
    if kernel == "fps":
        return make_config(
            _fps_kernel,
            pointers=dict(X=dtype, DIST=f32, OUT=i64, LEN=i64),
            flags=("HAS_LEN",),
            num_warps=4,
            num_stages=3,
            enable_fp_fusion=False,
            constexprs=dict(BLOCK=FPS_BLOCK),
        )
    kp = max(16, next_pow2(k))
    return make_config(
        _knn_kernel,
        pointers=dict(Q=dtype, P=dtype, D=f32, I=i64, QLEN=i64, PLEN=i64),
        flags=("HAS_QLEN", "HAS_PLEN"),
        num_warps=4,
        num_stages=3,
        enable_fp_fusion=False,
        constexprs=dict(KP=kp, BN=max(kp, 128)),
    )


def configs() -> list[LaunchConfig]:
    """Every configuration :func:`launch_config` returns (the same on a GPU and in the interpreter)."""
    return list(
        dict.fromkeys(
            [launch_config("fps", dt) for dt in HALF_AND_FLOAT]
            + [launch_config("knn", dt, k) for dt in HALF_AND_FLOAT for k in range(1, MAX_K + 1)]
        )
    )


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
    cfg = launch_config("fps", x.dtype)
    _fps_kernel[(B,)](x, dist, out, lens, N, npoint, start_idx, C, has_len, **cfg.launch_kwargs())
    return out


def knn(query, points, k, query_lengths, lengths):
    """query (B, M, C), points (B, N, C) -> (dists (B, M, k) in query's dtype, idx (B, M, k) int64)."""
    B, M, C = query.shape
    N = points.shape[1]
    dists = torch.empty((B, M, k), dtype=torch.float32, device=query.device)
    idx = torch.empty((B, M, k), dtype=torch.int64, device=query.device)
    if B * M == 0:
        return dists.to(query.dtype), idx
    has_q, has_p = query_lengths is not None, lengths is not None
    _knn_kernel[(B * M,)](
        query.contiguous(),
        points.contiguous(),
        dists,
        idx,
        query_lengths.contiguous() if has_q else idx,
        lengths.contiguous() if has_p else idx,
        M,
        N,
        k,
        C,
        has_q,
        has_p,
        **launch_config("knn", query.dtype, k).launch_kwargs(),
    )
    return dists.to(query.dtype), idx
