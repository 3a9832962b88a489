"""DCT attention: multi-head self-attention over the low-frequency 2D DCT coefficients of a feature map.

DCT-HistoTransformer (arXiv 2410.19166) attends over "the low-frequency DCT coefficients" of a
feature map and maps the result back to the spatial grid; the paper leaves the details open. This
module makes these choices (each an argument where it matters):

* Transform: the orthonormal 2D DCT-II per channel (energy-preserving, so the attention sees
  coefficients on the scale of the features, and its inverse is its transpose).
* Kept coefficients: the top-left ``kh x kw`` block, the lowest frequencies along both axes;
  ``keep=(kh, kw)`` fixes it, a float ``keep`` (or ``keep_ratio``) keeps that fraction of the
  coefficients (``kh = round(H * sqrt(r))``, likewise kw), so one module serves every map size.
  Default: a quarter (half of each axis).
* Tokens: the kept coefficients in row-major frequency order, channels as features; no positional
  embedding (a fixed-size one would tie the module to one map size).
* Back to the grid: the inverse DCT with the dropped (high) frequencies zero-filled.
* Projection: applied in the coefficient domain (kh*kw tokens instead of H*W: a channel mix commutes
  with the per-channel DCT), its bias added after the inverse DCT; the result equals projecting on
  the spatial grid. The DCT computes only the kept block (truncation fused into the transform).

State dict: ``qkv`` (Linear C -> 3C) and ``proj`` (Linear C -> C), timm's attention names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medkernels import ops
from medkernels._typing import Device, DType

__all__ = ["DCTAttention"]


class DCTAttention(nn.Module):
    """Self-attention over the low-frequency DCT coefficients of ``[B, C, H, W]`` feature maps.

    Args:
        dim: channels C.
        num_heads: heads; must divide C.
        keep: ``(kh, kw)`` (or an int for both) coefficients to keep, or a float in (0, 1]: the
            fraction of coefficients kept (default 0.25: half of each axis).
        qkv_bias: bias in the qkv projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        keep_ratio: keyword alias of a float ``keep``.
        qk_scale: softmax scale, default head_dim ** -0.5.
        backend: medkernels backend of the DCTs (None = automatic).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        keep: int | tuple[int, int] | None = None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        keep_ratio: float | None = None,
        qk_scale: float | None = None,
        backend: str | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if dim % num_heads != 0:
            raise ValueError(f"{name}: num_heads ({num_heads}) must divide dim ({dim})")
        if keep is not None and keep_ratio is not None:
            raise ValueError(f"{name}: pass keep or keep_ratio, not both")
        keep = 0.25 if keep is None and keep_ratio is None else keep if keep is not None else keep_ratio
        if isinstance(keep, float):
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"{name}: a fractional keep must be in (0, 1], got {keep}")
        else:
            if isinstance(keep, int) and not isinstance(keep, bool):
                keep = (keep, keep)
            if not (
                isinstance(keep, (tuple, list))
                and len(keep) == 2
                and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in keep)
            ):
                raise ValueError(f"{name}: keep must be (kh, kw) ints >= 1, an int, or a float in (0, 1], got {keep!r}")
            keep = tuple(keep)
        if not 0.0 <= attn_drop < 1.0 or not 0.0 <= proj_drop < 1.0:
            raise ValueError(f"{name}: attn_drop and proj_drop must be in [0, 1), got {attn_drop=}, {proj_drop=}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.keep = keep
        self.scale = qk_scale or self.head_dim**-0.5
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **factory)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **factory)
        self.proj_drop = nn.Dropout(proj_drop)

    def kept(self, height: int, width: int) -> tuple[int, int]:
        """The (kh, kw) coefficient block kept for an (height, width) map."""
        if isinstance(self.keep, float):
            f = math.sqrt(self.keep)
            return max(1, min(height, round(height * f))), max(1, min(width, round(width * f)))
        kh, kw = self.keep
        if kh > height or kw > width:
            raise ValueError(f"{type(self).__name__}: keep {self.keep} is larger than the {height}x{width} map")
        return kh, kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C, H, W]``. Returns ``[B, C, H, W]``."""
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}: expected [B, {self.dim}, H, W], got {tuple(x.shape)}")
        B, C, H, W = x.shape
        kh, kw = self.kept(H, W)
        n = kh * kw
        tokens = ops.dct2d(x, keep=(kh, kw), backend=self.backend).reshape(B, C, n).transpose(1, 2)  # [B, n, C]
        q, k, v = self.qkv(tokens).reshape(B, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale
        )
        a = F.linear(a.transpose(1, 2).reshape(B, n, C), self.proj.weight)  # the projection, on kept coefficients
        out = ops.idct2d(a.transpose(1, 2).reshape(B, C, kh, kw), s=(H, W), backend=self.backend)
        if self.proj.bias is not None:
            out = out + self.proj.bias[:, None, None]
        return self.proj_drop(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, keep={self.keep}"
