"""Benchmark peers: other libraries' and plain PyTorch's ways to compute what medkernels computes, timed by
``medkernels-bench`` in the same run.

The re-implementations of the official computations (D-Former's attention, FasterKAN's unfused layer) are
in :mod:`medkernels.testing`, shared with the tests that use them as oracles; they are re-exported here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medkernels.testing import (
    dformer_attention_official,
    dformer_attention_sdpa,
    kan_unfused,
    selective_scan_mamba_form,
)

__all__ = [
    "cdist_topk_knn",
    "dct2d_fft",
    "dformer_attention_official",
    "dformer_attention_sdpa",
    "ckdtree_build",
    "ckdtree_knn",
    "faiss_flat_knn",
    "flex_neighborhood_attention",
    "fpsample_kdline_fps",
    "kan_unfused",
    "scipy_dctn",
    "selective_scan_mamba_form",
    "spatial_attention",
]


# --- DCT attention --------------------------------------------------------------------------------------


def spatial_attention(x, qkv_weight, qkv_bias, proj_weight, proj_bias, num_heads, scale=None):
    """Multi-head self-attention over every pixel of ``[B, C, H, W]`` maps (what DCT attention
    avoids): qkv projection, SDPA over H*W tokens, output projection. Returns ``[B, C, H, W]``."""
    B, C, H, W = x.shape
    t = x.flatten(2).transpose(1, 2)
    q, k, v = F.linear(t, qkv_weight, qkv_bias).reshape(B, H * W, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).reshape(B, H * W, C)
    return F.linear(a, proj_weight, proj_bias).transpose(1, 2).reshape(B, C, H, W)


def _dct2_fft_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Orthonormal DCT-II along ``dim`` through one complex FFT of the even/odd reordering (Makhoul 1980)."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    k = torch.arange(n, device=x.device, dtype=x.dtype)
    w = torch.polar(torch.ones_like(k), -torch.pi * k / (2 * n))  # exp(-i pi k / 2N)
    out = (torch.fft.fft(v, dim=-1) * w).real * (2.0 / n) ** 0.5
    out = torch.cat([out[..., :1] / 2**0.5, out[..., 1:]], dim=-1)
    return out.movedim(-1, dim)


def dct2d_fft(x: torch.Tensor, keep: tuple[int, int] | None = None) -> torch.Tensor:
    """The orthonormal 2D DCT-II over the last two axes with ``torch.fft`` (differentiable; the way a user
    without a DCT op writes it), then the low-frequency ``keep`` corner."""
    y = _dct2_fft_axis(_dct2_fft_axis(x, -1), -2)
    return y if keep is None else y[..., : keep[0], : keep[1]]


def scipy_dctn(x: torch.Tensor, keep: tuple[int, int] | None = None) -> torch.Tensor:
    """``scipy.fft.dctn(type=2, norm="ortho")`` over the last two axes (numpy, forward only), then ``keep``."""
    from scipy import fft  # type: ignore

    y = torch.from_numpy(fft.dctn(x.detach().cpu().numpy(), type=2, norm="ortho", axes=(-2, -1)))
    return y if keep is None else y[..., : keep[0], : keep[1]]


# --- point clouds -------------------------------------------------------------------------------------


def fpsample_kdline_fps(xyz: torch.Tensor, npoint: int, h: int) -> torch.Tensor:
    """fpsample's ``bucket_fps_kdline_sampling`` (QuickFPS; its README's recommended method), cloud by cloud:
    exact, the textbook loop's indices from the start point it picks (fpsample 1.0 takes ``start_idx=0`` as
    "pick one", so the start differs from ours; the work does not depend on it). ``h``: the kd-tree height
    (buckets of ``2**h`` points; its docs: 5 or 7 for medium workloads)."""
    import fpsample  # type: ignore

    return torch.stack(
        [
            torch.from_numpy(
                fpsample.bucket_fps_kdline_sampling(c.detach().cpu().numpy(), npoint, h, start_idx=0).astype("int64")
            )
            for c in xyz
        ]
    )


def ckdtree_knn(query: torch.Tensor, points: torch.Tensor, k: int, trees: list | None = None):
    """scipy's ``cKDTree``: the tree built over each cloud (unless prebuilt ``trees`` are given), then queried
    with ``workers`` = torch's thread count. Returns squared distances and indices, as :func:`medkernels.ops.knn`."""
    from scipy.spatial import cKDTree  # type: ignore

    workers = torch.get_num_threads()
    dists, idx = [], []
    for b, (q, p) in enumerate(zip(query, points)):
        tree = trees[b] if trees is not None else cKDTree(p.detach().numpy())
        d, i = tree.query(q.detach().numpy(), k, workers=workers)
        dists.append(torch.from_numpy(d).square().float())
        idx.append(torch.from_numpy(i))
    return torch.stack(dists), torch.stack(idx)


def ckdtree_build(points: torch.Tensor) -> list:
    """One ``cKDTree`` per cloud of ``points`` ``[B, N, C]`` (for timing :func:`ckdtree_knn`'s query alone)."""
    from scipy.spatial import cKDTree  # type: ignore

    return [cKDTree(p.detach().numpy()) for p in points]


def faiss_flat_knn(query: torch.Tensor, points: torch.Tensor, k: int):
    """faiss-cpu's exact flat L2 index (built per call: the add is a copy), cloud by cloud: the peer for
    high-dimensional features (a kd-tree is the peer in 3-D)."""
    import faiss  # type: ignore

    dists, idx = [], []
    for q, p in zip(query, points):
        index = faiss.IndexFlatL2(p.shape[1])
        index.add(p.detach().contiguous().numpy())
        d, i = index.search(q.detach().contiguous().numpy(), k)
        dists.append(torch.from_numpy(d))
        idx.append(torch.from_numpy(i))
    return torch.stack(dists), torch.stack(idx)


def cdist_topk_knn(query: torch.Tensor, points: torch.Tensor, k: int):
    """What plain PyTorch code does: all pairwise distances with cdist, then topk (squared, differentiable)."""
    d, idx = torch.cdist(query, points).topk(k, dim=-1, largest=False)
    return d.square(), idx


# --- neighborhood attention -------------------------------------------------------------------------------


def _na_axis_mask(qi, ki, n: int, kernel: int, dilation: int):
    """natten's neighbourhood along one axis of length ``n``: the key shares the query's residue mod
    ``dilation`` and lies in the ``kernel``-long window of that residue class, centred and clamped at the ends."""
    r = qi % dilation
    members = (n - r + dilation - 1) // dilation
    start = (qi // dilation - kernel // 2).clamp(min=0).minimum((members - kernel).clamp(min=0))
    kj = ki // dilation
    return (ki % dilation == r) & (kj >= start) & (kj < start + kernel)


_FLEX: dict = {}


def flex_neighborhood_attention(query, key, value, kernel_size: int, dilation: int = 1):
    """Neighborhood attention through ``torch.compile(flex_attention)`` with a neighbourhood ``mask_mod``: the
    strongest same-result CPU peer (forward only: flex has no CPU backward). Heads-last ``[B, *spatial, heads,
    D]`` in and out, as :func:`medkernels.ops.na2d`. The compiled function and each shape's block mask are
    built once and cached (outside the timed calls after the first)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    spatial = tuple(query.shape[1:-2])
    key_ = (spatial, kernel_size, dilation, query.device)
    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    if key_ not in _FLEX:

        def mask_mod(b, h, q_idx, kv_idx):
            ok = None
            for n in reversed(spatial):  # row-major flattening: the last axis varies fastest
                m = _na_axis_mask(q_idx % n, kv_idx % n, n, kernel_size, dilation)
                ok = m if ok is None else ok & m
                q_idx, kv_idx = q_idx // n, kv_idx // n
            return ok

        length = math.prod(spatial)
        _FLEX[key_] = create_block_mask(mask_mod, None, None, length, length, device=query.device)
    q, k, v = (t.flatten(1, -3).transpose(1, 2) for t in (query, key, value))
    out = _FLEX["fn"](q, k, v, block_mask=_FLEX[key_])
    return out.transpose(1, 2).reshape(query.shape)
