"""D-Former's attention module and transformer block, on :func:`medkernels.ops.dilated_attention3d`.

Wu et al., "D-Former: A U-shaped Dilated Transformer for 3D Medical Image Segmentation"
(arXiv 2201.00462). Blocks alternate local-scope (LS-MSA) and global dilated-scope (GS-MSA) group
attention over ``[B, D, H, W, C]`` token grids. Parameter names follow the official code
(``attn.qkv``, ``attn.proj``, ``norm1``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), so its block weights load.
"""

from __future__ import annotations

import torch
from torch import nn

from medkernels import ops
from medkernels._typing import Device, DType, IntOrTuple
from medkernels.ops.checks import group_size3

from ._layers import DropPath, Mlp

__all__ = ["DilatedAttention3d", "DFormerBlock"]


class DilatedAttention3d(nn.Module):
    """Multi-head group self-attention on ``[B, D, H, W, C]`` (D-Former's ``Attention``).

    Args:
        dim: channels C.
        num_heads: heads; must divide C.
        group_size: int or ``(gD, gH, gW)``: tokens per group along each axis (clamped to the axis).
        scope: ``"local"`` (LS-MSA: windows of group_size tokens) or ``"global"`` (GS-MSA: the dilated
            partition, tokens ``padded size / group size`` apart).
        qkv_bias: bias in the qkv projection.
        qk_scale: softmax scale, default head_dim ** -0.5.
        attn_drop: dropout on the attention weights (training then runs the reference path, which
            forms the weights).
        proj_drop: dropout after the output projection.
        backend: medkernels backend of the attention (None = automatic).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        group_size: IntOrTuple = (2, 8, 8),
        scope: str = "local",
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        backend: str | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if dim % num_heads != 0:
            raise ValueError(f"{name}: num_heads ({num_heads}) must divide dim ({dim})")
        if scope not in ("local", "global"):
            raise ValueError(f"{name}: scope must be 'local' or 'global', got {scope!r}")
        if not 0.0 <= attn_drop < 1.0 or not 0.0 <= proj_drop < 1.0:
            raise ValueError(f"{name}: attn_drop and proj_drop must be in [0, 1), got {attn_drop=}, {proj_drop=}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.group_size = group_size3(name, group_size)
        self.scope = scope
        self.scale = qk_scale or self.head_dim**-0.5
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **factory)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, group_size: IntOrTuple | None = None) -> torch.Tensor:
        """Args: x ``[B, D, H, W, C]``; group_size: overrides the module's for this call.
        Returns ``[B, D, H, W, C]``."""
        if x.dim() != 5 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__}: expected [B, D, H, W, {self.dim}], got {tuple(x.shape)}")
        group = self.group_size if group_size is None else group_size
        B, D, H, W, C = x.shape
        q, k, v = self.qkv(x).reshape(B, D, H, W, 3, self.num_heads, self.head_dim).unbind(4)  # strided views
        dropout_p = self.attn_drop.p if self.training else 0.0  # > 0: the reference runs (ops warns once)
        out = ops.dilated_attention3d(q, k, v, group, self.scope, self.scale, dropout_p=dropout_p, backend=self.backend)
        return self.proj_drop(self.proj(out.reshape(B, D, H, W, C)))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, group_size={self.group_size}, scope={self.scope!r}, "
            f"attn_drop={self.attn_drop.p}"
        )


class DFormerBlock(nn.Module):
    """D-Former transformer block on ``[B, D, H, W, C]``: ``x + drop_path(attn(norm1(x)))`` then
    ``x + drop_path(mlp(norm2(x)))`` (pre-LN; MLP ratio 4 with GELU by default).

    As in D-Former, when the grid is smaller than the group in height or width the block attends over
    the whole volume (the deepest stage, 4^3 tokens for group (2, 8, 8), is full attention).

    Args:
        dim: channels C.
        num_heads: heads; must divide C.
        group_size: ``(gD, gH, gW)``, D-Former's default (2, 8, 8).
        scope: ``"local"`` (LS-MSA, even blocks in D-Former) or ``"global"`` (GS-MSA, odd blocks).
        mlp_ratio: MLP hidden size over dim.
        qkv_bias: bias in the qkv projection.
        qk_scale: softmax scale, default head_dim ** -0.5.
        drop: dropout after each projection.
        attn_drop: dropout on the attention weights.
        drop_path: stochastic depth rate of both residual branches.
        act_layer: MLP activation (nn.GELU).
        norm_layer: normalisation (nn.LayerNorm).
        backend: medkernels backend of the attention (None = automatic).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        group_size: IntOrTuple = (2, 8, 8),
        scope: str = "local",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        *,
        backend: str | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm1 = norm_layer(dim, **factory)
        self.attn = DilatedAttention3d(
            dim, num_heads, group_size, scope, qkv_bias, qk_scale, attn_drop, drop, backend=backend, **factory
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, **factory)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, D, H, W, C]``. Returns the same shape."""
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__}: expected [B, D, H, W, C], got {tuple(x.shape)}")
        _, D, H, W, _ = x.shape
        g = self.attn.group_size
        group = (D, H, W) if H < g[1] or W < g[2] else None  # D-Former: no partition on a small map
        x = x + self.drop_path(self.attn(self.norm1(x), group))
        return x + self.drop_path(self.mlp(self.norm2(x)))
