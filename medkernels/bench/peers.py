"""Plain-PyTorch ways to compute what medkernels computes, as the papers' code and users do it.

The benchmark times them as peers, and the tests use them as implementations independent of the
medkernels kernels and their ``_ref`` oracles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["cdist_topk_knn", "dformer_attention_official", "dformer_attention_sdpa", "faiss_flat_knn", "fpsample_fps",
           "kan_unfused", "spatial_attention"]


class _Groups:
    """D-Former's pad-reshape-permute grouping of a ``[B, D, H, W, heads, dim]`` tensor (the official
    code's ``view``/``permute`` chains), with group sizes clamped to the axes."""

    def __init__(self, shape, group_size, scope: str):
        B, D, H, W, self.heads, self.dim = shape
        self.size = (D, H, W)
        self.g = [min(g, n) for g, n in zip(group_size, self.size)]
        self.pad = [(g - n % g) % g for g, n in zip(self.g, self.size)]
        self.padded = [n + p for n, p in zip(self.size, self.pad)]
        if scope == "local":  # B, Dp/g, g, Hp/g, g, Wp/g, g: windows outer, members inner
            self.view = (B, self.padded[0] // self.g[0], self.g[0], self.padded[1] // self.g[1], self.g[1],
                         self.padded[2] // self.g[2], self.g[2])
            self.perm = (0, 1, 3, 5, 2, 4, 6)
        else:  # B, g, I, g, I, g, I with I = padded / g: members outer, groups inner
            self.view = (B, self.g[0], self.padded[0] // self.g[0], self.g[1], self.padded[1] // self.g[1],
                         self.g[2], self.padded[2] // self.g[2])
            self.perm = (0, 2, 4, 6, 1, 3, 5)
        self.tokens = self.g[0] * self.g[1] * self.g[2]
        self.inverse = tuple(self.perm.index(i) for i in range(7))

    def group(self, t):
        """``[B, D, H, W, heads, dim]`` -> ``[B * groups, heads, tokens, dim]`` (padded with zeros)."""
        t = F.pad(t, (0, 0, 0, 0, 0, self.pad[2], 0, self.pad[1], 0, self.pad[0]))
        t = t.reshape(*self.view, self.heads, self.dim).permute(*self.perm, 7, 8)
        return t.reshape(-1, self.tokens, self.heads, self.dim).transpose(1, 2)

    def ungroup(self, t):
        """The inverse of :meth:`group`, cropping the padding."""
        shape = [self.view[p] for p in self.perm]
        t = t.transpose(1, 2).reshape(*shape, self.heads, self.dim).permute(*self.inverse, 7, 8)
        D, H, W = self.size
        return t.reshape(self.view[0], *self.padded, self.heads, self.dim)[:, :D, :H, :W]

    def key_padding(self, device):
        """``[groups, tokens]`` True where a member is padding, or None without padding."""
        if not any(self.pad):
            return None
        mask = torch.zeros(1, *self.padded, dtype=torch.bool, device=device)
        D, H, W = self.size
        mask[:, D:] = True
        mask[:, :, H:] = True
        mask[:, :, :, W:] = True  # every axis: the official global-scope mask forgets depth
        m = mask.reshape(1, *self.view[1:]).permute(*self.perm)
        return m.reshape(-1, self.tokens)


def dformer_attention_official(query, key, value, group_size, scope, scale=None):
    """D-Former's own way (kkk55596/D-Former ``model.py``): pad, reshape and permute q/k/v into
    groups, dense ``q @ k^T`` with an additive -1e6 on padded keys, softmax, ``@ v``, then permute,
    reshape and crop back. Inputs and output ``[B, D, H, W, heads, dim]``."""
    layout = _Groups(query.shape, group_size, scope)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = (layout.group(t) for t in (query, key, value))
    attn = (q * scale) @ k.transpose(-2, -1)
    pad = layout.key_padding(query.device)
    if pad is not None:
        groups = pad.shape[0]
        attn = attn.view(-1, groups, layout.heads, layout.tokens, layout.tokens) \
            + (pad.to(attn.dtype) * -1e6).view(1, groups, 1, 1, layout.tokens)
        attn = attn.view(-1, layout.heads, layout.tokens, layout.tokens)
    return layout.ungroup(attn.softmax(dim=-1) @ v)


def dformer_attention_sdpa(query, key, value, group_size, scope, scale=None):
    """The same grouping, with torch's ``scaled_dot_product_attention`` on the permuted tokens (what a
    user would write today). Inputs and output ``[B, D, H, W, heads, dim]``."""
    layout = _Groups(query.shape, group_size, scope)
    q, k, v = (layout.group(t) for t in (query, key, value))
    pad = layout.key_padding(query.device)
    mask = None
    if pad is not None:
        groups = pad.shape[0]
        mask = (~pad).view(1, groups, 1, 1, layout.tokens).expand(q.shape[0] // groups, -1, -1, -1, -1)
        mask = mask.reshape(q.shape[0], 1, 1, layout.tokens)
    return layout.ungroup(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale))


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

    return torch.stack([torch.from_numpy(fpsample.fps_sampling(c.detach().cpu().numpy(), npoint,
                                                                start_idx=start_idx).astype("int64"))
                        for c in xyz])


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


# --- FasterKAN -----------------------------------------------------------------------------------------


def kan_unfused(x, grid, inv_denominator, weight):
    """FasterKAN's own layer after its LayerNorm (AthanasiosDelis/faster-kan, MedViTV2's ``fasterkan.py``):
    the RSWAF basis ``1 - tanh((x[..., None] - grid) * inv_denominator)^2`` materialised as
    ``(..., in * G)``, then ``F.linear`` without bias. x ``(..., in)``, weight ``(out, in * G)``."""
    diff = (x[..., None] - grid).mul(inv_denominator)
    t = torch.tanh(diff)
    basis = 1 - t * t
    return F.linear(basis.flatten(-2), weight)
