"""Benchmark peers: other libraries' and plain PyTorch's ways to compute what medkernels computes, timed by
``medkernels-bench`` in the same run.

The re-implementations of the official computations (D-Former's attention, FasterKAN's unfused layer) are
in :mod:`medkernels.testing`, shared with the tests that use them as oracles; they are re-exported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medkernels.testing import dformer_attention_official, dformer_attention_sdpa, kan_unfused

__all__ = [
    "cdist_topk_knn",
    "dformer_attention_official",
    "dformer_attention_sdpa",
    "faiss_flat_knn",
    "fpsample_fps",
    "kan_unfused",
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


# --- point clouds -------------------------------------------------------------------------------------


def fpsample_fps(xyz: torch.Tensor, npoint: int, start_idx: int = 0) -> torch.Tensor:
    """fpsample's exact ``fps_sampling`` (CPU, numpy), cloud by cloud: the textbook loop's indices."""
    import fpsample  # type: ignore

    return torch.stack(
        [
            torch.from_numpy(
                fpsample.fps_sampling(c.detach().cpu().numpy(), npoint, start_idx=start_idx).astype("int64")
            )
            for c in xyz
        ]
    )


def faiss_flat_knn(query: torch.Tensor, points: torch.Tensor, k: int):
    """faiss-cpu's exact flat L2 index (built per call: the add is a copy), cloud by cloud."""
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
