"""MedViTV2's blocks: the local (LFP) and global (GFP) feature perception blocks and their parts.

Manzari et al. 2025, "MedViTV2: Medical Image Classification with KAN-Integrated Transformers and Dilated
Neighborhood Attention" (arXiv 2502.13693); official code github.com/Omid-Nejati/MedViTV2 (``MedViT.py``,
vendored ``fasterkan.py``). The blocks run on ``[B, C, H, W]`` (NCHW) maps; the neighborhood attention on
:func:`medkernels.ops.na2d` (heads last) and the KAN on :func:`medkernels.ops.rswaf_kan`:

    LFP:  x = PatchEmbed(x)
          x = x + DropPath(NA(BN(x)))                    dilated NA, kernel 7, relative position bias
          x = x + LFFN(BN(x))                            LFFN(u) = u + SE-MobileNet bottleneck(u)
    GFP:  x = PatchEmbed(x)                              -> C_mhsa = make_divisible(0.75 C, 32) channels
          x = x + DropPath(E-MHSA(BN(x)))                K/V average-pooled over sr^2 tokens
          o = PatchEmbed(x) -> C - C_mhsa channels;  o = o + DropPath(MHCA(o))
          x = cat(x, o);  x = x + DropPath(KAN(BN(x)))   FasterKAN([C, 2C, C]) per pixel

Every parameter keeps the official name (``attn.qkv``, ``attn.rpb``, ``conv.conv.<i>``, ``e_mhsa.q``,
``mhca.group_conv3x3``, ``kan.layers.<n>.spline_linear``, ...), so the official blocks' weights load with
``strict=True`` (the official GFP also builds an LFFN ``conv`` it never calls: not built here; see
:meth:`medkernels.models.medvitv2.MedViTV2.checkpoint_filter`).

Two layouts, one set of parameters (``official_layout``):

- ``False`` (the paper): the NCHW map is permuted to ``[B, H, W, C]`` before the neighborhood attention and
  before the KAN, so both see the C-vector of each pixel.
- ``True`` (the official code's computation, what its checkpoints were trained with): the NCHW buffer is
  ``reshape``d to ``[B, H, W, C]`` (LFP) and to ``[B * C * H * W / C, C]`` (GFP) without a permute, so the
  attention and the KAN see rows of the flattened NCHW buffer (channel-major runs of pixels), and the
  attention's output is reshaped back the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medkernels import ops
from medkernels._typing import Backend, Device, DType

from ._layers import DropPath
from .kan import FasterKAN
from .neighborhood_attention import NeighborhoodAttention2D

__all__ = [
    "ConvBNReLU",
    "EfficientMHSA",
    "FittedNeighborhoodAttention2D",
    "GFPBlock",
    "LFPBlock",
    "LocalityFeedForward",
    "MHCA",
    "PatchEmbed",
    "SqueezeExcite",
    "make_divisible",
]

NORM_EPS = 1e-5


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """``v`` rounded to the nearest multiple of ``divisor`` (at least ``min_value``, default ``divisor``),
    rounded up once more if that lost over 10% (the MobileNet rule the official code uses)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU(nn.Module):
    """Conv2d (no bias, padding 1) -> BatchNorm2d -> ReLU: ``[B, C_in, H, W] -> [B, C_out, H', W']``.

    Args:
        in_channels, out_channels: channels.
        kernel_size: the convolution's kernel (3 in MedViTV2's stem; the padding is 1 as there).
        stride: the convolution's stride.
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=1, bias=False, **factory)
        self.norm = nn.BatchNorm2d(out_channels, eps=NORM_EPS, **factory)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class PatchEmbed(nn.Module):
    """Down-sampling and channel change at a block's entry: ``[B, C_in, H, W] -> [B, C_out, H', W']``.

    stride 2: AvgPool2d(2, ceil_mode, count_include_pad=False) -> 1x1 conv (no bias) -> BatchNorm2d, so
    ``H' = ceil(H / 2)``; stride 1 with a channel change: the conv and BatchNorm only; otherwise identity
    (no parameters).

    Args:
        in_channels, out_channels: channels.
        stride: 1 or 2.
        device, dtype: of the parameters.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, *, device: Device = None, dtype: DType = None
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"PatchEmbed: stride must be 1 or 2, got {stride}")
        factory = {"device": device, "dtype": dtype}
        self.avgpool: nn.Module = (
            nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False) if stride == 2 else nn.Identity()
        )
        if stride == 2 or in_channels != out_channels:
            self.conv: nn.Module = nn.Conv2d(in_channels, out_channels, 1, bias=False, **factory)
            self.norm: nn.Module = nn.BatchNorm2d(out_channels, eps=NORM_EPS, **factory)
        else:
            self.conv = nn.Identity()
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.avgpool(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a hard sigmoid gate on ``[B, C, H, W]``: ``x * gate(mean_hw(x))`` with
    ``gate = Linear(C, C // reduction) -> ReLU -> Linear -> Hardsigmoid`` (state_dict ``fc.0``, ``fc.2``).

    Args:
        channels: C.
        reduction: the bottleneck is ``C // reduction`` wide (MedViTV2 passes the block's width: 3 units).
        device, dtype: of the parameters.
    """

    def __init__(self, channels: int, reduction: int = 4, *, device: Device = None, dtype: DType = None) -> None:
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"SqueezeExcite: channels // reduction must be >= 1, got {channels} // {reduction}")
        factory = {"device": device, "dtype": dtype}
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, **factory),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, **factory),
            nn.Hardsigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class LocalityFeedForward(nn.Module):
    """The locality feed-forward (LFFN, from LocalViT) with its own residual, on ``[B, C, H, W]``:
    ``x + conv(x)``, conv = 1x1 (C -> rC) BN h-swish, depthwise kxk BN h-swish, SE, 1x1 (rC -> C) BN.

    The ``conv`` Sequential keeps the official indices (0, 1, 3, 4, 6.fc, 7, 8 hold parameters).

    Args:
        dim: C.
        kernel_size: the depthwise convolution's kernel (padding k // 2).
        expand_ratio: r, the hidden width ``int(C * r)``.
        reduction: the SE layer's reduction (MedViTV2: C, so the SE bottleneck is r units wide).
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        expand_ratio: float = 3.0,
        reduction: int = 4,
        *,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        hidden = int(dim * expand_ratio)
        self.conv = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False, **factory),
            nn.BatchNorm2d(hidden, **factory),
            nn.Hardswish(),
            nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=False, **factory),
            nn.BatchNorm2d(hidden, **factory),
            nn.Hardswish(),
            SqueezeExcite(hidden, reduction, **factory),
            nn.Conv2d(hidden, dim, 1, bias=False, **factory),
            nn.BatchNorm2d(dim, **factory),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


class MHCA(nn.Module):
    """Multi-head convolutional attention (Next-ViT) on ``[B, C, H, W]``: grouped 3x3 conv (C / head_dim
    groups) -> BN -> ReLU -> 1x1 conv (no biases).

    Args:
        channels: C (a multiple of head_dim).
        head_dim: channels per group.
        device, dtype: of the parameters.
    """

    def __init__(self, channels: int, head_dim: int = 32, *, device: Device = None, dtype: DType = None) -> None:
        super().__init__()
        if channels % head_dim != 0:
            raise ValueError(f"MHCA: channels ({channels}) must be a multiple of head_dim ({head_dim})")
        factory = {"device": device, "dtype": dtype}
        self.group_conv3x3 = nn.Conv2d(
            channels, channels, 3, padding=1, groups=channels // head_dim, bias=False, **factory
        )
        self.norm = nn.BatchNorm2d(channels, eps=NORM_EPS, **factory)
        self.act = nn.ReLU(inplace=True)
        self.projection = nn.Conv2d(channels, channels, 1, bias=False, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.act(self.norm(self.group_conv3x3(x))))


class EfficientMHSA(nn.Module):
    """Efficient multi-head self-attention (Next-ViT's E-MHSA) on tokens ``[B, N, C]``.

    Queries from every token; keys and values from the tokens average-pooled in groups of ``sr_ratio**2``
    consecutive tokens (raster order, as the official ``AvgPool1d`` over the flattened map) and
    batch-normalised, then ``softmax(q k^T * head_dim**-0.5) v`` (scaled_dot_product_attention) and a
    projection. When the map has fewer than ``sr_ratio**2`` tokens (tiny inputs, where the official code
    raises), the pool takes all of them.

    Args:
        dim: C, a multiple of head_dim.
        head_dim: channels per head.
        sr_ratio: spatial reduction; 1 uses every token as a key.
        qkv_bias: biases in q, k, v.
        attn_drop, proj_drop: dropout on the attention weights and after the projection.
        device, dtype: of the parameters.

    State dict: ``q``, ``k``, ``v``, ``proj`` (Linear C -> C) and ``norm`` (BatchNorm1d, sr_ratio > 1).
    """

    def __init__(
        self,
        dim: int,
        head_dim: int = 32,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        if dim % head_dim != 0:
            raise ValueError(f"EfficientMHSA: dim ({dim}) must be a multiple of head_dim ({head_dim})")
        factory = {"device": device, "dtype": dtype}
        self.dim, self.head_dim, self.num_heads = dim, head_dim, dim // head_dim
        self.scale = head_dim**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **factory)
        self.k = nn.Linear(dim, dim, bias=qkv_bias, **factory)
        self.v = nn.Linear(dim, dim, bias=qkv_bias, **factory)
        self.proj = nn.Linear(dim, dim, **factory)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.norm = nn.BatchNorm1d(dim, eps=NORM_EPS, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, N, C]`` (tokens in raster order). Returns ``[B, N, C]``."""
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        kv = x
        if self.sr_ratio > 1:
            r = min(self.sr_ratio**2, N)
            kv = self.norm(F.avg_pool1d(x.transpose(1, 2), r, r)).transpose(1, 2)  # [B, N // r, C]
        k = self.k(kv).reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(kv).reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"


class FittedNeighborhoodAttention2D(NeighborhoodAttention2D):
    """:class:`NeighborhoodAttention2D` whose window is fitted to each input map, with a backend choice.

    Per axis of length L, for a kernel K and dilation d: the kernel becomes ``min(K, L)`` and the dilation
    ``max(1, min(d, L // kernel))``, so that ``kernel * dilation <= L`` (the largest dilation that fits, as
    DiNAT chooses dilations per resolution). At the resolution a model is designed for nothing changes (MedViTV2
    at 224x224: 56 / 28 / 14 >= 7 x 8 / 4 / 2); smaller maps get a smaller dilation, and maps smaller than the
    kernel attend to the whole axis with the central ``2L - 1`` entries of the relative position bias (the
    same bias per relative offset). natten raises in both cases. Axes of length 1 raise ValueError.

    Args: as :class:`NeighborhoodAttention2D` (``dilation`` is the largest used), plus
        backend: medkernels backend of :func:`medkernels.ops.na2d` (None = automatic); settable.

    Shapes: ``[B, H, W, C] -> [B, H, W, C]``. State dict: ``qkv``, ``proj`` and ``rpb`` (with rel_pos_bias).
    """

    def __init__(self, *args, backend: Backend = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if any(s != 1 for s in self.stride) or any(self.is_causal):
            raise ValueError("FittedNeighborhoodAttention2D: stride 1 and non-causal only")
        self.backend = backend

    def fitted(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The (kernel, dilation) used on an ``H x W`` map."""
        if min(size) < 2:
            raise ValueError(
                f"{type(self).__name__}: the map is {size[0]}x{size[1]}; neighborhood attention needs at least "
                "2 tokens per axis (a larger input image)"
            )
        kernel = tuple(min(k, n) for k, n in zip(self.kernel_size, size))
        dilation = tuple(max(1, min(d, n // k)) for d, k, n in zip(self.dilation, kernel, size))
        return kernel, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, H, W, C]``. Returns ``[B, H, W, C]``."""
        if x.dim() != 4 or x.shape[-1] != self.embed_dim:
            raise ValueError(
                f"{type(self).__name__}: expected [B, H, W, {self.embed_dim}] (channels last), got {tuple(x.shape)}"
            )
        B, H, W, C = x.shape
        kernel, dilation = self.fitted((H, W))
        rpb = self.rpb
        if rpb is not None and kernel != self.kernel_size:
            (K0, K1), (k0, k1) = self.kernel_size, kernel
            rpb = rpb[:, K0 - k0 : K0 + k0 - 1, K1 - k1 : K1 + k1 - 1]
        qkv = self.qkv(x).reshape(B, H, W, 3, self.num_heads, self.head_dim)
        if self.training and self.attn_drop_rate > 0:  # the weights are needed: unfused, heads first
            q, k, v = qkv.permute(3, 0, 4, 1, 2, 5)
            attn = ops.na2d_qk(q * self.scale, k, kernel, dilation, rpb=rpb, backend=self.backend).softmax(-1)
            out = ops.na2d_av(self.attn_drop(attn), v, kernel, dilation, backend=self.backend)
            out = out.permute(0, 2, 3, 1, 4)
        else:
            q, k, v = qkv.unbind(3)
            out = ops.na2d(q, k, v, kernel, 1, dilation, scale=self.scale, rpb=rpb, backend=self.backend)
        return self.proj_drop(self.proj(out.reshape(B, H, W, C)))


def _to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, H, W, C]`` (a view; free when x is in the channels_last memory format)."""
    return x.permute(0, 2, 3, 1)


def _to_channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


class LFPBlock(nn.Module):
    """Local feature perception block (official ``LFP``) on ``[B, C_in, H, W] -> [B, C_out, H', W']``.

    Args:
        in_channels, out_channels: channels (out a multiple of head_dim).
        kernel_size: the LFFN's depthwise kernel (7 in stage 1, 3 after).
        stride: 2 down-samples at the entry (:class:`PatchEmbed`).
        drop_path: stochastic depth of the attention branch.
        head_dim: channels per attention head.
        na_kernel_size: the neighborhood attention's window (7).
        dilation: its dilation (the paper: 8 / 4 / 2 per stage; the official code: 1), fitted to the map
            (:class:`FittedNeighborhoodAttention2D`).
        mlp_ratio: the LFFN's expansion (3).
        attn_drop: dropout on the attention weights.
        official_layout: reshape NCHW to ``[B, H, W, C]`` without a permute around the attention, as the
            official code (see the module docstring).
        backend: medkernels backend of the attention.
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        drop_path: float = 0.0,
        head_dim: int = 32,
        na_kernel_size: int = 7,
        dilation: int = 1,
        mlp_ratio: float = 3.0,
        attn_drop: float = 0.0,
        *,
        official_layout: bool = False,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        if out_channels % head_dim != 0:
            raise ValueError(f"LFPBlock: out_channels ({out_channels}) must be a multiple of head_dim ({head_dim})")
        factory = {"device": device, "dtype": dtype}
        self.official_layout = official_layout
        self.patch_embed = PatchEmbed(in_channels, out_channels, stride, **factory)
        self.norm1 = nn.BatchNorm2d(out_channels, eps=NORM_EPS, **factory)
        self.attn = FittedNeighborhoodAttention2D(
            out_channels,
            out_channels // head_dim,
            na_kernel_size,
            dilation=dilation,
            qkv_bias=True,
            rel_pos_bias=True,
            attn_drop=attn_drop,
            backend=backend,
            **factory,
        )
        self.attention_path_dropout = DropPath(drop_path)
        self.conv = LocalityFeedForward(out_channels, kernel_size, mlp_ratio, reduction=out_channels, **factory)
        self.norm2 = nn.BatchNorm2d(out_channels, eps=NORM_EPS, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C_in, H, W]``. Returns ``[B, C_out, H', W']``."""
        x = self.patch_embed(x)
        B, C, H, W = x.shape
        u = self.norm1(x)
        if self.official_layout:
            a = self.attn(u.reshape(B, H, W, C)).reshape(B, C, H, W)
        else:
            a = _to_channels_first(self.attn(_to_channels_last(u)))
        x = x + self.attention_path_dropout(a)
        return x + self.conv(self.norm2(x))

    def extra_repr(self) -> str:
        return f"official_layout={self.official_layout}"


class GFPBlock(nn.Module):
    """Global feature perception block (official ``GFP``) on ``[B, C_in, H, W] -> [B, C_out, H', W']``.

    Args:
        in_channels, out_channels: channels.
        drop_path: stochastic depth (E-MHSA branch x mix_block_ratio, MHCA x (1 - mix_block_ratio), KAN x 1).
        stride: 2 down-samples at the entry.
        sr_ratio: E-MHSA's spatial reduction.
        mlp_ratio: the KAN's hidden width ``int(C * mlp_ratio)`` (2).
        head_dim: channels per head (E-MHSA) and per group (MHCA).
        mix_block_ratio: the E-MHSA share of the channels, ``make_divisible(ratio * C, 32)``.
        attn_drop, drop: E-MHSA's attention and projection dropout.
        official_layout: feed the KAN rows of the flattened NCHW buffer, as the official code (see the
            module docstring).
        backend: medkernels backend of the KAN.
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        drop_path: float = 0.0,
        stride: int = 1,
        sr_ratio: int = 1,
        mlp_ratio: float = 2.0,
        head_dim: int = 32,
        mix_block_ratio: float = 0.75,
        attn_drop: float = 0.0,
        drop: float = 0.0,
        *,
        official_layout: bool = False,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.official_layout = official_layout
        self.mhsa_out_channels = make_divisible(int(out_channels * mix_block_ratio), 32)
        self.mhca_out_channels = out_channels - self.mhsa_out_channels
        if self.mhca_out_channels < head_dim or self.mhca_out_channels % head_dim:
            raise ValueError(
                f"GFPBlock: out_channels={out_channels} with mix_block_ratio={mix_block_ratio} leaves "
                f"{self.mhca_out_channels} MHCA channels; need a positive multiple of head_dim ({head_dim})"
            )
        self.patch_embed = PatchEmbed(in_channels, self.mhsa_out_channels, stride, **factory)
        self.norm1 = nn.BatchNorm2d(self.mhsa_out_channels, eps=NORM_EPS, **factory)
        self.e_mhsa = EfficientMHSA(
            self.mhsa_out_channels, head_dim, sr_ratio, attn_drop=attn_drop, proj_drop=drop, **factory
        )
        self.mhsa_path_dropout = DropPath(drop_path * mix_block_ratio)
        self.projection = PatchEmbed(self.mhsa_out_channels, self.mhca_out_channels, 1, **factory)
        self.mhca = MHCA(self.mhca_out_channels, head_dim, **factory)
        self.mhca_path_dropout = DropPath(drop_path * (1 - mix_block_ratio))
        self.norm2 = nn.BatchNorm2d(out_channels, eps=NORM_EPS, **factory)
        self.mlp_path_dropout = DropPath(drop_path)
        self.kan = FasterKAN([out_channels, int(out_channels * mlp_ratio), out_channels], backend=backend, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C_in, H, W]``. Returns ``[B, C_out, H', W']``."""
        x = self.patch_embed(x)
        B, C, H, W = x.shape
        tokens = self.norm1(x).flatten(2).transpose(1, 2)  # [B, H*W, C] (a permute in both layouts)
        x = x + self.mhsa_path_dropout(self.e_mhsa(tokens)).transpose(1, 2).reshape(B, C, H, W)
        o = self.projection(x)
        x = torch.cat([x, o + self.mhca_path_dropout(self.mhca(o))], dim=1)
        u = self.norm2(x)
        C = x.shape[1]
        if self.official_layout:
            k = self.kan(u.reshape(-1, C)).reshape(B, C, H, W)
        else:
            k = _to_channels_first(self.kan(_to_channels_last(u)))
        return x + self.mlp_path_dropout(k)

    def extra_repr(self) -> str:
        return (
            f"mhsa_out_channels={self.mhsa_out_channels}, mhca_out_channels={self.mhca_out_channels}, "
            f"official_layout={self.official_layout}"
        )
