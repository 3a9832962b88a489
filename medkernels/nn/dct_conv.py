"""DCT-Conv block: DCT attention and a MobileNetV2 inverted residual in parallel, fused, with a residual.

DCT-HistoTransformer (Ranjbar, Mohebbi, Cherakhloo, Vosoughi Vahdat 2024, "DCT-HistoTransformer: Efficient
Lightweight Vision Transformer with DCT Integration for histopathological image analysis", arXiv 2410.19166)
builds its network from blocks with two parallel pathways on a feature map: DCT attention (a 2D DCT-II of the
map, only the low-frequency coefficients kept, self-attention over those, back to the grid) and MobileConv (a
MobileNet-style convolution pathway); the two are fused. No official code is published (2026-12), so nothing
here can be checked against an official state_dict; every choice the paper's text leaves open is an argument:

    DCTConvBlock:  a = DCTAttention(norm1(x))                 medkernels.nn.DCTAttention (ops.dct2d / ops.idct2d)
                   m = MobileConv(x)                          1x1 expand, norm, act, depthwise kxk, norm, act,
                                                              1x1 project, norm (MobileNetV2's inverted residual)
                   x = x + DropPath(fuse(a, m))

* ``fusion`` (default ``"sum"``): ``a + m``, no parameters; ``"concat"``: a 1x1 convolution (2C -> C, no bias)
  and a norm over ``cat(a, m)`` (state_dict ``fuse.conv``, ``fuse.norm``); ``"gate"``: ``g a + (1 - g) m``
  with ``g = sigmoid(gate)``, a learned per-channel ``gate`` (initialised 0: an even mix). The paper says the
  pathways are fused, not how; the sum is the cheapest and what a residual stream of two branches does.
* The attention pathway is pre-normalised (``norm1``, as in a transformer block); the MobileConv pathway takes
  ``x`` itself (its first 1x1 convolution is followed by a norm, MobileNetV2's order).
* ``norm_layer``: ``"batch"`` (BatchNorm2d, default: MobileNetV2's and a small-data CNN's choice) or
  ``"layer"`` (LayerNorm over the channels of each pixel, a transformer's choice), for every norm of the block.
* ``act_layer``: the MobileConv activations, default ``"relu6"`` (MobileNetV2); also ``"relu"``, ``"silu"``,
  ``"gelu"``, ``"hardswish"``, or an ``nn.Module`` class.
* The DCT attention's choices (orthonormal DCT-II, the top-left kept block, ``keep`` default a quarter of the
  coefficients, no positional embedding, zero-filled inverse) are :class:`medkernels.nn.DCTAttention`'s.
* No separate MLP: MobileConv is the block's feed-forward (an inverted residual is an MLP with a depthwise
  convolution inside), which keeps the block "lightweight".

State dict (timm's names): ``norm1``, ``attn.qkv``, ``attn.proj``, ``mobile.{conv_pw, bn1, conv_dw, bn2,
conv_pwl, bn3}`` (timm's ``InvertedResidual``), and ``fuse.{conv, norm}`` or ``gate`` by fusion.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from medkernels._typing import Backend, Device, DType

from ._layers import DropPath
from .dct_attention import DCTAttention

__all__ = ["DCTConvBlock", "LayerNorm2d", "MobileConv", "check_act", "make_act", "make_norm2d"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu6": nn.ReLU6,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "hardswish": nn.Hardswish,
}
NORMS = ("batch", "layer")
FUSIONS = ("sum", "concat", "gate")


def check_act(owner: str, act_layer) -> None:
    """Raises ValueError (naming ``act_layer`` and ``owner``) unless it is a known name or an nn.Module class."""
    known = isinstance(act_layer, str) and act_layer in ACTIVATIONS
    if not known and not (isinstance(act_layer, type) and issubclass(act_layer, nn.Module)):
        names = sorted(ACTIVATIONS)
        raise ValueError(f"{owner}: act_layer must be one of {names} or a module class, got {act_layer!r}")


def make_act(act_layer: str | type[nn.Module]) -> nn.Module:
    """The activation module named by ``act_layer`` (a key of ``ACTIVATIONS``) or built from its class."""
    check_act("make_act", act_layer)
    return ACTIVATIONS[act_layer]() if isinstance(act_layer, str) else act_layer()


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of ``[B, C, H, W]`` (timm's ``LayerNorm2d``): the map is
    permuted to ``[B, H, W, C]``, normalised over C, and permuted back. Parameters ``weight``, ``bias`` (C,)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def make_norm2d(norm_layer: str, channels: int, *, device: Device = None, dtype: DType = None) -> nn.Module:
    """``"batch"``: BatchNorm2d(C); ``"layer"``: :class:`LayerNorm2d`(C) (eps 1e-5 both)."""
    if norm_layer not in NORMS:
        raise ValueError(f"make_norm2d: norm_layer must be one of {NORMS}, got {norm_layer!r}")
    factory = {"device": device, "dtype": dtype}
    return nn.BatchNorm2d(channels, **factory) if norm_layer == "batch" else LayerNorm2d(channels, **factory)


class MobileConv(nn.Module):
    """MobileNetV2's inverted residual (Sandler et al. 2018, arXiv 1801.04381) on ``[B, C_in, H, W]``.

    ``conv_pw`` 1x1 (C_in -> hidden, no bias) -> ``bn1`` -> act -> ``conv_dw`` depthwise kxk (stride s, no bias)
    -> ``bn2`` -> act -> ``conv_pwl`` 1x1 (hidden -> C_out, no bias) -> ``bn3`` (no activation: the linear
    bottleneck), plus the input when ``residual`` (needs stride 1 and C_in == C_out). With ``expand_ratio == 1``
    the expansion (``conv_pw``, ``bn1``) is left out, as in MobileNetV2. State dict names: timm's
    ``InvertedResidual`` (``bn*`` whatever ``norm_layer`` is).

    Args:
        in_channels: C_in.
        out_channels: C_out (default C_in).
        expand_ratio: hidden width ``round(C_in * expand_ratio)``.
        kernel_size: the depthwise kernel (odd; padding k // 2).
        stride: the depthwise stride (1 or 2); the output is ``ceil(H / s) x ceil(W / s)``.
        residual: add the input (MobileNetV2 does when stride 1 and C_in == C_out). Off by default: as a
            pathway of :class:`DCTConvBlock` the block adds the residual.
        norm_layer: ``"batch"`` (BatchNorm2d) or ``"layer"`` (:class:`LayerNorm2d`).
        act_layer: ``"relu6"`` (MobileNetV2), ``"relu"``, ``"silu"``, ``"gelu"``, ``"hardswish"`` or a class.
        device, dtype: of the parameters.

    Shapes:
        ``[B, C_in, H, W] -> [B, C_out, ceil(H / stride), ceil(W / stride)]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        expand_ratio: float = 4.0,
        kernel_size: int = 3,
        stride: int = 1,
        residual: bool = False,
        *,
        norm_layer: str = "batch",
        act_layer: str | type[nn.Module] = "relu6",
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        out_channels = in_channels if out_channels is None else out_channels
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"{name}: in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if not expand_ratio >= 1.0:
            raise ValueError(f"{name}: expand_ratio must be >= 1, got {expand_ratio}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be an odd int >= 1, got {kernel_size}")
        if stride not in (1, 2):
            raise ValueError(f"{name}: stride must be 1 or 2, got {stride}")
        if residual and (stride != 1 or in_channels != out_channels):
            raise ValueError(f"{name}: residual needs stride 1 and in_channels == out_channels")
        if norm_layer not in NORMS:
            raise ValueError(f"{name}: norm_layer must be one of {NORMS}, got {norm_layer!r}")
        check_act(name, act_layer)
        factory = {"device": device, "dtype": dtype}
        hidden = int(round(in_channels * expand_ratio))
        self.in_channels, self.out_channels, self.hidden_channels = in_channels, out_channels, hidden
        self.stride, self.kernel_size, self.residual = stride, kernel_size, residual
        if hidden != in_channels:
            self.conv_pw: nn.Module = nn.Conv2d(in_channels, hidden, 1, bias=False, **factory)
            self.bn1: nn.Module = make_norm2d(norm_layer, hidden, **factory)
            self.act1: nn.Module = make_act(act_layer)
        else:
            self.conv_pw = self.bn1 = self.act1 = nn.Identity()
        self.conv_dw = nn.Conv2d(
            hidden, hidden, kernel_size, stride, padding=kernel_size // 2, groups=hidden, bias=False, **factory
        )
        self.bn2 = make_norm2d(norm_layer, hidden, **factory)
        self.act2 = make_act(act_layer)
        self.conv_pwl = nn.Conv2d(hidden, out_channels, 1, bias=False, **factory)
        self.bn3 = make_norm2d(norm_layer, out_channels, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C_in, H, W]``. Returns ``[B, C_out, H', W']``."""
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return x + y if self.residual else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, hidden={self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, residual={self.residual}"
        )


class _ConcatFuse(nn.Module):
    """``norm(conv1x1(cat(a, m)))``: 2C -> C."""

    def __init__(self, dim: int, norm_layer: str, *, device: Device = None, dtype: DType = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * dim, dim, 1, bias=False, device=device, dtype=dtype)
        self.norm = make_norm2d(norm_layer, dim, device=device, dtype=dtype)

    def forward(self, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(torch.cat([a, m], 1)))


class DCTConvBlock(nn.Module):
    """DCT-Conv block: DCT attention and MobileConv in parallel on ``[B, C, H, W]``, fused, plus the input.

    ``x + DropPath(fuse(DCTAttention(norm1(x)), MobileConv(x)))``; see the module docstring for the choices.

    Args:
        dim: channels C.
        num_heads: attention heads (divides C). Default ``C // 32`` (at least 1).
        keep: the kept low-frequency block: a float in (0, 1], the fraction of the coefficients (default 0.25:
            half of each axis, whatever the map size), or ``(kh, kw)`` / an int (see :class:`DCTAttention`).
        expand_ratio: MobileConv's hidden width over C (4).
        kernel_size: MobileConv's depthwise kernel (3).
        fusion: ``"sum"`` (default), ``"concat"`` (1x1 conv + norm over the concatenation) or ``"gate"`` (a
            learned per-channel convex mix).
        norm_layer: ``"batch"`` (default) or ``"layer"``, for ``norm1``, MobileConv's and the fusion's norms.
        act_layer: MobileConv's activation (``"relu6"`` default, or another name or class).
        qkv_bias: bias in the attention's qkv projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the attention's output projection.
        drop_path: stochastic depth of the fused branch.
        backend: medkernels backend of the DCTs (None = automatic); settable later (:attr:`backend`).
        device, dtype: of the parameters.

    Shapes:
        ``[B, C, H, W] -> [B, C, H, W]``; any H, W >= 1 with a fractional ``keep`` (an explicit ``(kh, kw)``
        needs ``H >= kh``, ``W >= kw``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int | None = None,
        keep: float | int | tuple[int, int] = 0.25,
        expand_ratio: float = 4.0,
        kernel_size: int = 3,
        fusion: str = "sum",
        *,
        norm_layer: str = "batch",
        act_layer: str | type[nn.Module] = "relu6",
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if dim < 1:
            raise ValueError(f"{name}: dim must be >= 1, got {dim}")
        num_heads = max(1, dim // 32) if num_heads is None else num_heads
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"{name}: num_heads ({num_heads}) must be >= 1 and divide dim ({dim})")
        if fusion not in FUSIONS:
            raise ValueError(f"{name}: fusion must be one of {FUSIONS}, got {fusion!r}")
        if norm_layer not in NORMS:
            raise ValueError(f"{name}: norm_layer must be one of {NORMS}, got {norm_layer!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"{name}: drop_path must be in [0, 1), got {drop_path}")
        factory = {"device": device, "dtype": dtype}
        self.dim, self.fusion = dim, fusion
        self.norm1 = make_norm2d(norm_layer, dim, **factory)
        self.attn = DCTAttention(dim, num_heads, keep, qkv_bias, attn_drop, proj_drop, backend=backend, **factory)
        self.mobile = MobileConv(
            dim, dim, expand_ratio, kernel_size, norm_layer=norm_layer, act_layer=act_layer, **factory
        )
        if fusion == "concat":
            self.fuse = _ConcatFuse(dim, norm_layer, **factory)
        elif fusion == "gate":
            self.gate = nn.Parameter(torch.zeros(dim, **factory))
        self.drop_path = DropPath(drop_path)

    @property
    def backend(self) -> Backend:
        """The medkernels backend of the DCTs (None = automatic)."""
        return self.attn.backend

    @backend.setter
    def backend(self, value: Backend) -> None:
        self.attn.backend = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C, H, W]``. Returns ``[B, C, H, W]``."""
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}: expected [B, {self.dim}, H, W], got {tuple(x.shape)}")
        a = self.attn(self.norm1(x))
        m = self.mobile(x)
        if self.fusion == "sum":
            y = a + m
        elif self.fusion == "concat":
            y = self.fuse(a, m)
        else:
            g = torch.sigmoid(self.gate)[:, None, None]
            y = m + g * (a - m)
        return x + self.drop_path(y)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, fusion={self.fusion!r}"
