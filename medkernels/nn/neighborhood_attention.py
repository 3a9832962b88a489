"""Neighborhood attention modules, drop-in for natten's ``NeighborhoodAttention{1,2,3}D``.

Hassani et al., "Neighborhood Attention Transformer" (arXiv 2204.07143) and "Dilated Neighborhood
Attention Transformer" (arXiv 2209.15001). The constructor is natten 0.21's; ``rel_pos_bias`` and
``attn_drop`` (keyword-only) and the first-argument name ``dim`` come from natten 0.17, so both
0.21 checkpoints and 0.17 checkpoints with a relative positional bias (MedViTV2's) load with
``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from medkernels import ops
from medkernels._typing import BoolOrTuple, Device, DType, IntOrTuple
from medkernels.ops.checks import na_causal, na_dims

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D"]


class _NeighborhoodAttention(nn.Module):
    na_dim: int

    def __init__(
        self,
        embed_dim: int | None = None,
        num_heads: int | None = None,
        kernel_size: IntOrTuple | None = None,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        *,
        rel_pos_bias: bool = False,
        attn_drop: float = 0.0,
        dim: int | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if dim is not None:
            if embed_dim is not None:
                raise ValueError(f"{name}: pass embed_dim or its natten 0.17 name dim, not both")
            embed_dim = dim
        if embed_dim is None or num_heads is None or kernel_size is None:
            raise TypeError(f"{name}: embed_dim (or dim), num_heads and kernel_size are required")
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"{name}: Number of attention heads must evenly divide embedding dimension, got "
                f"{embed_dim=}, {num_heads=}."
            )
        if not 0.0 <= attn_drop < 1.0 or not 0.0 <= proj_drop < 1.0:
            raise ValueError(f"{name}: attn_drop and proj_drop must be in [0, 1), got {attn_drop=}, {proj_drop=}")
        n = self.na_dim
        self.kernel_size = na_dims("kernel_size", kernel_size, n, 2, "all >= 2")
        self.stride = na_dims("stride", stride, n, 1, "all positive")
        self.dilation = na_dims("dilation", dilation, n, 1, "all positive")
        self.is_causal = na_causal(is_causal, n)
        if any(s > k for s, k in zip(self.stride, self.kernel_size)):
            raise ValueError(
                f"{name}: Stride cannot be larger than kernel size along any dimension, got "
                f"kernel_size={self.kernel_size}, stride={self.stride}."
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(embed_dim, embed_dim * 3, bias=qkv_bias, **factory)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in self.kernel_size), **factory))
            nn.init.trunc_normal_(self.rpb, std=0.02, mean=0.0, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.attn_drop_rate = attn_drop
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(embed_dim, embed_dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, *spatial, C]``. Returns ``[B, *spatial, C]``."""
        n = self.na_dim
        if x.dim() != n + 2:
            raise ValueError(
                f"{type(self).__name__} expected a tensor with rank {n + 2} (batch, {n} token dims, "
                f"channels), got {x.dim()=}."
            )
        B, *spatial, C = x.shape
        if C != self.embed_dim:
            layout = "[B, " + ", ".join(f"X{i}" for i in range(n)) + ", C]"
            hint = (
                f"; a channels-first [B, C, ...] tensor must be permuted to {layout} first"
                if x.shape[1] == self.embed_dim
                else ""
            )
            raise ValueError(
                f"{type(self).__name__}: expected embedding dimension {self.embed_dim}, got {C} (the "
                f"layout is channels-last {layout}, got shape {tuple(x.shape)}{hint})."
            )
        qkv = self.qkv(x).reshape(B, *spatial, 3, self.num_heads, self.head_dim)
        if self.training and self.attn_drop_rate > 0:
            # Attention dropout needs the weights: the unfused path (heads first), as natten 0.17.
            qkv = qkv.permute(n + 1, 0, n + 2, *range(1, n + 1), n + 3)
            q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
            qk = getattr(ops, f"na{n}d_qk")
            av = getattr(ops, f"na{n}d_av")
            if any(s != 1 for s in self.stride):
                raise ValueError(f"{type(self).__name__}: attention dropout with stride > 1 is not supported")
            attn = qk(q, k, self.kernel_size, self.dilation, self.is_causal, rpb=self.rpb).softmax(dim=-1)
            out = av(self.attn_drop(attn), v, self.kernel_size, self.dilation, self.is_causal)
            out = out.permute(0, *range(2, n + 2), 1, n + 2).reshape(B, *spatial, C)
        else:
            qkv = qkv.permute(n + 1, *range(n + 1), n + 2, n + 3)
            fused = getattr(ops, f"na{n}d")
            out = fused(
                qkv[0],
                qkv[1],
                qkv[2],
                self.kernel_size,
                self.stride,
                self.dilation,
                self.is_causal,
                scale=self.scale,
                rpb=self.rpb,
            ).reshape(B, *spatial, C)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, head_dim={self.head_dim}, num_heads={self.num_heads}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, "
            f"is_causal={self.is_causal}, rel_pos_bias={self.rpb is not None}, attn_drop={self.attn_drop_rate}"
        )


class NeighborhoodAttention1D(_NeighborhoodAttention):
    """1-D neighborhood attention on ``[B, L, C]`` (natten's ``NeighborhoodAttention1D``).

    Args:
        embed_dim: channels C (natten 0.17 name: ``dim``).
        num_heads: heads; must divide C.
        kernel_size, stride, dilation, is_causal: as :func:`medkernels.ops.na1d`.
        qkv_bias: bias in the qkv projection.
        qk_scale: softmax scale, default head_dim ** -0.5.
        proj_drop: dropout after the output projection.
        rel_pos_bias: learn a relative positional bias ``rpb [heads, 2K-1]`` (natten 0.17).
        attn_drop: dropout on the attention weights (training runs the unfused qk/av path then).
        device, dtype: of the parameters.
    """

    na_dim = 1


class NeighborhoodAttention2D(_NeighborhoodAttention):
    """2-D neighborhood attention on ``[B, H, W, C]`` (natten's ``NeighborhoodAttention2D``).

    Args: as :class:`NeighborhoodAttention1D`, per axis; ``rpb`` is ``[heads, 2K0-1, 2K1-1]``.
    """

    na_dim = 2


class NeighborhoodAttention3D(_NeighborhoodAttention):
    """3-D neighborhood attention on ``[B, D, H, W, C]`` (natten's ``NeighborhoodAttention3D``).

    Args: as :class:`NeighborhoodAttention1D`, per axis; ``rpb`` is ``[heads, 2K0-1, 2K1-1, 2K2-1]``.
    """

    na_dim = 3
