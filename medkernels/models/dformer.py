"""D-Former: the U-shaped dilated transformer for 3D segmentation, on :mod:`medkernels.nn`'s D-Former blocks.

Wu et al., "D-Former: a U-shaped Dilated Transformer for 3D medical image segmentation", Neural Computing and
Applications 2023 (arXiv 2201.00462). The architecture is the official ``SegNetwork`` (GitHub
kkk55596/D-Former, ``model.py``), with its state-dict names, so its checkpoints load with ``strict=True``:

* patch embedding (Conv3d, kernel = stride = ``patch_size``, then LayerNorm) to a token grid ``[B, D, H, W, C]``;
* four encoder stages (C, 2C, 4C, 8C), each a dynamic position encoding (depthwise 3x3x3 convolution plus
  identity) then blocks alternating local-scope (even) and global dilated-scope (odd) attention; patch
  merging (2x2x2 neighbours, LayerNorm(8C), Linear(8C -> 2C)) after stages 1-3; a LayerNorm at the bottom;
* the Swin-Unet-style decoder: patch expanding (Linear(C -> 4C), 2x2x2 sub-voxels of C/2, LayerNorm), and per
  stage the encoder tensor that entered the stage at that resolution concatenated, Linear(2C -> C), position
  encoding and blocks; LayerNorm;
* the x4 final expansion (Linear(C -> 32C) into ``patch_size`` sub-voxels, LayerNorm(C)) and a 1x1x1
  convolution to the classes; with deep supervision also the half-resolution logits of the decoder map of
  2C channels.

Every tensor between the layers is channels-last ``[B, D, H, W, C]`` (the official code flips layouts in and
out of each stage); the last head fuses its LayerNorm with the class projection so that the 32C-channel
expansion is written once and never normalised, rearranged or read back at full size.

Differences from the official code (documented, tested in tests/test_model_dformer.py):

* ``num_classes`` sets the heads' output channels (the official ``SegNetwork`` builds 14 whatever it is
  given) and ``embed_dim`` the width (the official ``SegNetwork`` does not pass it on: only 96 builds).
* Any input size: the official network needs D divisible by 16 and H, W by 32. Here the patch embedding pads
  to the patch (as the official one), patch merging pads odd sizes with zeros on every axis (the official one
  pads H and W), each decoder map is cropped to its skip and the logits to the input size.
* The global scope groups tokens as the official code does (each axis padded to a multiple of the stage's
  interval 8/4/2/1, decoder alike, ``I = padded // group``; see :mod:`medkernels.nn.dformer`) with the
  padding masked on every axis: the official mask forgets depth-only padding.
* A block decides full attention (height or width below the group) on every call; the official block
  switches itself for good after one small input.
* Only the returned heads run: the official forward also computes the heads it discards.
* Weights start from PyTorch's default initialisation, as the official code does without a pretrained path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medkernels._typing import Device, DType
from medkernels.nn import DFormerBlock, DilatedAttention3d
from medkernels.nn.dformer import official_global_intervals

from ._backend import KernelBackend
from ._registry import register_model

__all__ = ["DFormer", "dformer"]

_Size3 = tuple[int, int, int]


def _triple(name: str, value, what: str) -> _Size3:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * 3
    if (
        isinstance(value, Sequence)
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return tuple(value)
    raise ValueError(f"DFormer: {name} must be an int or 3 ints, each >= 1 ({what}), got {value!r}")


# --- fused pieces: the final head and the position encoding -----------------------------------------------


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


_CHUNK_ELEMENTS = 1 << 23  # the fused head's y elements per chunk (32 MB in float32)


def _chunks(T: int, PC: int) -> list[tuple[int, int]]:
    n = max(1, _CHUNK_ELEMENTS // PC)
    return [(i, min(i + n, T)) for i in range(0, T, n)]


class _ExpandNormProject(torch.autograd.Function):
    """The official head ``FinalPatchExpand_X4`` + 1x1x1 Conv3d, fused, on tokens ``x`` ``[T, Ci]``:
    ``y = x @ E^T`` split into P sub-voxels of C channels, LayerNorm(C) of each (``gamma``, ``beta``, ``eps``),
    then ``W`` ``[K, C]`` (no bias). ``grid = (B, D, H, W, pd, ph, pw)`` (T = B*D*H*W tokens, P = pd*ph*pw) lays
    the result out as the logits ``[B, K, D*pd, H*ph, W*pw]``, written in place by the last elementwise step.

    With ``Wg = W * gamma`` and ``Ec_v`` = the sub-voxel's expansion weights ``E_v`` minus their mean row (so
    ``y_v - mean(y_v) = Ec_v @ x`` exactly, with nothing to cancel against a large mean), the LayerNorm and
    projection are ``z = (x @ (Wg @ Ec_v)^T) * rstd + W @ beta``: small matmuls of x. Only the variance needs
    the centred expansion: it is formed chunk by chunk (cache-sized) and reduced; nothing of y's size is kept
    for the backward. The backward never forms it: the LayerNorm's variance term reaches x and E through the
    Gram matrices ``Ec_v^T Ec_v`` and the per-row weighted products ``m2 (x) x``, two matmuls of y's size per
    chunk; the rest are small matmuls of x. The [T, P*C] expansion (400 MB at 64x128x128) is never
    stored, normalised or rearranged, and no [T, P*C] gradient exists. Runs in float32 (float64 for float64)
    whatever the autocast state."""

    @staticmethod
    def _setup(E, gamma, W, P):
        K, C = W.shape
        Ev = E.view(P, C, E.shape[1])
        Ec = Ev - Ev.mean(1, keepdim=True)  # y_v - mean(y_v) = Ec_v @ x exactly: nothing cancels against the mean
        Mk = torch.einsum("kc,vci->vki", W * gamma, Ec)  # [P, K, Ci]: per sub-voxel v, Wg @ Ec_v
        return Ec, Mk

    @staticmethod
    def forward(ctx, x, E, gamma, beta, W, eps, grid):  # noqa: D102
        B, D, H, Wd, pd, ph, pw = grid
        P = pd * ph * pw
        keep = any(ctx.needs_input_grad[:5])
        dtypes = [t.dtype for t in (x, E, gamma, beta, W)]
        with torch.autocast(x.device.type, enabled=False):
            acc = _acc_dtype(x)
            x, E, gamma, beta, W = (t.to(acc) for t in (x, E, gamma, beta, W))
            T, K, C = x.shape[0], W.shape[0], W.shape[1]
            Ec, Mk = _ExpandNormProject._setup(E, gamma, W, P)
            z = x @ Mk.reshape(P * K, -1).t()  # [T, P*K]: Wg @ (y_v - mean)
            Ect = Ec.reshape(P * C, -1).t()
            chunks = _chunks(T, P * C)
            y = x.new_empty(chunks[0][1], P, C)
            var = x.new_empty(T, P)
            for a, b in chunks:  # the centred sum of squares, chunk by chunk
                yc = y[: b - a]
                torch.mm(x[a:b], Ect, out=yc.view(b - a, P * C))
                torch.linalg.vector_norm(yc, dim=-1, out=var[a:b])
            rstd = var.square_().div_(C).add_(eps).rsqrt_()
            out = x.new_empty(B, K, D * pd, H * ph, Wd * pw)
            view = out.view(B, K, D, pd, H, ph, Wd, pw).permute(0, 2, 4, 6, 3, 5, 7, 1)  # [B, D, H, W, pd, ph, pw, K]
            z = z.view(view.shape)
            if torch.compiler.is_compiling():  # dynamo refuses a non-contiguous out=
                view.copy_(torch.addcmul(W @ beta, z, rstd.view(*view.shape[:-1], 1)))
            else:
                torch.addcmul(W @ beta, z, rstd.view(*view.shape[:-1], 1), out=view)
        if keep:
            ctx.save_for_backward(x, E, gamma, beta, W, rstd)
            ctx.grid, ctx.dtypes = grid, dtypes
        return out if torch.is_autocast_enabled(x.device.type) else out.to(dtypes[0])

    @staticmethod
    def backward(ctx, gz):  # noqa: D102
        x, E, gamma, beta, W, rstd = ctx.saved_tensors
        B, D, H, Wd, pd, ph, pw = ctx.grid
        P = pd * ph * pw
        with torch.autocast(x.device.type, enabled=False):
            T, Ci = x.shape
            K, C = W.shape
            Ec, Mk = _ExpandNormProject._setup(E, gamma, W, P)
            Mk = Mk.reshape(P * K, Ci)
            zr = (x @ Mk.t()).view(T, P, K)  # Wg @ (y_v - mean), as in the forward
            gz = gz.reshape(B, K, D, pd, H, ph, Wd, pw).permute(0, 2, 4, 6, 3, 5, 7, 1)
            g = x.new_empty(T, P, K)
            g.view(gz.shape).copy_(gz)  # the logits' gradient gathered into [T, P, K]
            gzs = g * rstd[..., None]
            # LayerNorm backward through the centred weights: dy_v - mean(dy_v) = rstd * Wgc^T g - m2 (y - mean),
            # Wgc = Wg minus its channel mean, and d(y_v) reaches E_v and x only through Ec_v.
            m2 = rstd.pow(3) * (g * zr).sum(-1) / C
            q = gzs.view(T, P * K).t() @ x  # [P*K, Ci]
            # The m2 (y - mean) term without y: with G_v = Ec_v^T Ec_v, dx -= sum_v m2_v G_v x and
            # dE_v -= Ec_v Q_v, Q_v = sum over tokens of m2_v x x^T. Both need only xw = m2 (x) x per token: two
            # matmuls of y's size per chunk (recomputing y and pushing it through E would cost three).
            dx = gzs.view(T, P * K) @ Mk
            wg = W * gamma
            dE = torch.einsum("kc,vki->vci", wg - wg.mean(1, keepdim=True), q.view(P, K, Ci))
            gram = torch.bmm(Ec.transpose(1, 2), Ec).view(P * Ci, Ci)  # [G_1; ...; G_P], each symmetric
            Q = x.new_zeros(P * Ci, Ci)
            chunks = _chunks(T, P * Ci)
            xw = x.new_empty(chunks[0][1], P, Ci)
            for a, b in chunks:
                xc = xw[: b - a]
                torch.mul(x[a:b, None, :], m2[a:b, :, None], out=xc)
                xc = xc.view(b - a, P * Ci)
                dx[a:b].addmm_(xc, gram, alpha=-1)
                Q.addmm_(xc.t(), x[a:b])
            dE = torch.baddbmm(dE, Ec, Q.view(P, Ci, Ci), alpha=-1).reshape(P * C, Ci)
            a_kc = torch.einsum("vki,vci->kc", q.view(P, K, Ci), Ec)  # sum over tokens of gzs (y - mean)^T
            gsum = g.sum((0, 1))
            dW = a_kc * gamma + gsum[:, None] * beta
            dgamma = (W * a_kc).sum(0)
            dbeta = gsum @ W
        grads = (t.to(dt) for t, dt in zip((dx, dE, dgamma, dbeta, dW), ctx.dtypes))
        return (*grads, None, None)


class _DepthwiseConvIdentity(torch.autograd.Function):
    """``x + conv3d(x, w, b, padding=1, groups=C)`` on channels-last ``[B, D, H, W, C]`` (D-Former's position
    encoding), the convolution run on the channels-last-3d view. In float32/float64 it is ONE depthwise
    convolution whose centre tap carries the identity (``w + delta``); under autocast or in half precision
    the identity is added separately (rounding ``w + 1`` to bfloat16 would cost the identity path its
    precision). The backward forms the input gradient as the flipped-kernel convolution and the bias
    gradient as a plain sum (the default depthwise backward takes about 10x longer for them on CPU), and
    the weight gradient in float32 whatever the input dtype."""

    @staticmethod
    def forward(ctx, x, w, b):  # noqa: D102
        C = x.shape[-1]
        fused = x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type)
        if fused:
            w = w.clone()
            w[:, :, 1, 1, 1] += 1
        y = F.conv3d(x.permute(0, 4, 1, 2, 3), w.to(x.dtype), b.to(x.dtype), 1, 1, 1, C).permute(0, 2, 3, 4, 1)
        ctx.save_for_backward(x, w)
        ctx.fused = fused
        return y if fused else x + y

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        x, w = ctx.saved_tensors
        C = x.shape[-1]
        gv = g.permute(0, 4, 1, 2, 3)
        dx = F.conv3d(gv, w.flip((2, 3, 4)).to(g.dtype), None, 1, 1, 1, C).permute(0, 2, 3, 4, 1)
        if not ctx.fused:
            dx = dx + g
        # the weight gradient in float32 (float64 for float64): a sum over every voxel, and PyTorch's CPU
        # bfloat16 channels-last depthwise weight gradient returns garbage at small grids (torch 2.x)
        acc = _acc_dtype(w)
        dw = torch.nn.grad.conv3d_weight(x.permute(0, 4, 1, 2, 3).to(acc), w.shape, gv.to(acc), 1, 1, 1, C)
        db = g.sum((0, 1, 2, 3), dtype=w.dtype)
        return dx.to(x.dtype), dw.to(w.dtype), db


# --- layers (the official module names) ----------------------------------------------------------------------


class _PatchEmbed(nn.Module):
    """Patch embedding: Conv3d (kernel = stride = patch) as a matmul over each patch's voxels, LayerNorm.
    ``[B, C_in, D, H, W]`` (a multiple of the patch) -> ``[B, D/pd, H/ph, W/pw, C]``."""

    def __init__(self, patch_size: _Size3, in_chans: int, embed_dim: int, **factory) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, patch_size, patch_size, **factory)
        self.norm = nn.LayerNorm(embed_dim, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, Ci, D, H, W = x.shape
        pd, ph, pw = self.patch_size
        x = x.reshape(B, Ci, D // pd, pd, H // ph, ph, W // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        x = x.reshape(B, D // pd, H // ph, W // pw, Ci * pd * ph * pw)
        w = self.proj.weight
        return self.norm(F.linear(x, w.reshape(w.shape[0], -1), self.proj.bias))


class _PositionEncoding(nn.Module):
    """Dynamic position encoding (CPVT's PEG, the official ``PosCNN``): ``x + dwconv3x3x3(x)`` on
    ``[B, D, H, W, C]``: one depthwise convolution with the identity in its centre tap, on the
    channels-last-3d view (no copies)."""

    def __init__(self, dim: int, **factory) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv3d(dim, dim, 3, 1, 1, groups=dim, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.proj[0]
        return _DepthwiseConvIdentity.apply(x, conv.weight, conv.bias)


class _PatchMerging(nn.Module):
    """2x2x2 neighbours concatenated (official order: depth, height, width offsets, width fastest),
    LayerNorm(8C), Linear(8C -> 2C, no bias). Odd sizes are zero padded. ``[B, D, H, W, C]`` ->
    ``[B, ceil(D/2), ceil(H/2), ceil(W/2), 2C]``."""

    def __init__(self, dim: int, **factory) -> None:
        super().__init__()
        self.reduction = nn.Linear(8 * dim, 2 * dim, bias=False, **factory)
        self.norm = nn.LayerNorm(8 * dim, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, D, H, W, C = x.shape
        if D % 2 or H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2, 0, D % 2))
            B, D, H, W, C = x.shape
        x = x.view(B, D // 2, 2, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
        return self.reduction(self.norm(x.reshape(B, D // 2, H // 2, W // 2, 8 * C)))


class _PatchExpand(nn.Module):
    """Linear(C -> parts * C_out, no bias), each token's output split into ``parts`` sub-voxels of C_out
    channels (the official ``b d h w (p0 p1 p2 c) -> b (d p0) (h p1) (w p2) c``), LayerNorm(C_out) (applied
    before the rearrangement: it is per sub-voxel). Patch expanding (2x2x2, C_out = C/2) and the final x4
    expansion (``patch_size``, C_out = C) of the official code."""

    def __init__(self, dim: int, parts: _Size3, out_dim: int, **factory) -> None:
        super().__init__()
        self.parts = parts
        self.expand = nn.Linear(dim, parts[0] * parts[1] * parts[2] * out_dim, bias=False, **factory)
        self.norm = nn.LayerNorm(out_dim, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, D, H, W, _ = x.shape
        p0, p1, p2 = self.parts
        c = self.norm.normalized_shape[0]
        y = self.norm(self.expand(x).view(B, D, H, W, p0, p1, p2, c))
        return y.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(B, D * p0, H * p1, W * p2, c)


class _Stage(nn.Module):
    """One encoder (``downsample``) or decoder (``upsample``) stage: position encoding, then blocks
    alternating local and global (official interval rule) scope, then the resampling. Official names
    ``blocks.{j}``, ``pos_block``, ``downsample``/``upsample``."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        group_size: _Size3,
        interval: int,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop: float,
        attn_drop: float,
        drop_path: Sequence[float],
        resample: str | None,
        backend: str | None,
        **factory,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            DFormerBlock(
                dim,
                num_heads,
                group_size,
                "local" if j % 2 == 0 else "global",
                mlp_ratio,
                qkv_bias,
                qk_scale,
                drop,
                attn_drop,
                drop_path[j],
                interval=None if j % 2 == 0 else interval,
                backend=backend,
                **factory,
            )
            for j in range(depth)
        )
        if resample == "down":
            self.downsample = _PatchMerging(dim, **factory)
        self.pos_block = _PositionEncoding(dim, **factory)
        if resample == "up":
            self.upsample = _PatchExpand(dim, (2, 2, 2), dim // 2, **factory)
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_block(x)
        for blk in self.blocks:
            x = blk(x)
        if self.resample == "down":
            x = self.downsample(x)
        elif self.resample == "up":
            x = self.upsample(x)
        return x


class _Backbone(nn.Module):
    """The official ``DFormer3D`` (encoder, bottleneck norm, decoder); names ``patch_embed``, ``layers``,
    ``layers_up``, ``concat_back_dim``, ``norm``, ``norm_up``."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        patch_size: _Size3,
        group_size: _Size3,
        intervals: Sequence[int],
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: float | None,
        drop_rate: float,
        attn_drop_rate: float,
        drop_path_rate: float,
        backend: str | None,
        **factory,
    ) -> None:
        super().__init__()
        L = len(depths)
        self.num_layers = L
        self.patch_embed = _PatchEmbed(patch_size, in_chans, embed_dim, **factory)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        start = [sum(depths[:i]) for i in range(L)]
        common = dict(
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            backend=backend,
            **factory,
        )

        def stage(i: int, resample: str | None) -> _Stage:
            return _Stage(
                embed_dim * 2**i,
                depths[i],
                num_heads[i],
                group_size,
                intervals[i],
                drop_path=dpr[start[i] : start[i] + depths[i]],
                resample=resample,
                **common,
            )

        self.layers = nn.ModuleList(stage(i, "down" if i < L - 1 else None) for i in range(L))
        self.layers_up = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for inx in range(L):
            i = L - 1 - inx
            dim = embed_dim * 2**i
            if inx == 0:
                self.layers_up.append(_PatchExpand(dim, (2, 2, 2), dim // 2, **factory))
                self.concat_back_dim.append(nn.Identity())
            else:
                self.layers_up.append(stage(i, "up" if inx < L - 1 else None))
                self.concat_back_dim.append(nn.Linear(2 * dim, dim, **factory))
        self.norm = nn.LayerNorm(embed_dim * 2 ** (L - 1), **factory)
        self.norm_up = nn.LayerNorm(embed_dim, **factory)

    def forward(self, x: torch.Tensor, half: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Args: x ``[B, C_in, D, H, W]`` (a multiple of the patch); half: also return the decoder map of
        2C channels (the half-resolution deep-supervision features).
        Returns ``(full [B, D', H', W', C], half [B, ., ., ., 2C] or None)``."""
        x = self.pos_drop(self.patch_embed(x))
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        x = self.norm(x)
        L = self.num_layers
        half_map = None
        for inx, layer_up in enumerate(self.layers_up):
            if inx > 0:
                x = layer_up(self.concat_back_dim[inx](torch.cat([x, skips[L - 1 - inx]], -1)))
            else:
                x = layer_up(x)
            if inx < L - 1:  # the expanded map, cropped to the skip it meets (odd sizes were padded)
                D, H, W = skips[L - 2 - inx].shape[1:4]
                if x.shape[1:4] != (D, H, W):
                    x = x[:, :D, :H, :W]
            if half and inx == L - 3:
                half_map = x
        return self.norm_up(x), half_map


class _SegHead(nn.Module):
    """The official ``final.{i}``: ``0`` = FinalPatchExpand_X4 (``expand``, ``norm``), ``1`` = the 1x1x1
    Conv3d to the classes (no bias). Runs fused: ``[B, D, H, W, C]`` -> ``[B, classes, D*pd, H*ph, W*pw]``."""

    def __init__(self, dim: int, num_classes: int, patch_size: _Size3, **factory) -> None:
        super().__init__()
        self.add_module("0", _PatchExpand(dim, patch_size, dim, **factory))
        self.add_module("1", nn.Conv3d(dim, num_classes, 1, bias=False, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expand, conv = getattr(self, "0"), getattr(self, "1")
        B, D, H, W, C = x.shape
        norm, K = expand.norm, conv.out_channels
        w = conv.weight.reshape(K, C)
        grid = (B, D, H, W, *expand.parts)
        return _ExpandNormProject.apply(
            x.reshape(-1, C), expand.expand.weight, norm.weight, norm.bias, w, norm.eps, grid
        )


class DFormer(KernelBackend, nn.Module):
    """D-Former (Wu et al., arXiv 2201.00462) for 3D segmentation: the official ``SegNetwork`` on medkernels'
    dilated attention, any input size (see the module docstring for what differs from the official code).

    Args:
        num_classes: output channels of the logits (the official code always builds 14).
        in_channels: input channels.
        embed_dim: channels C of the first stage (C, 2C, 4C, 8C).
        depths: blocks per stage (even blocks local scope, odd blocks global scope).
        num_heads: heads per stage.
        patch_size: patch embedding and final expansion, ``(pd, ph, pw)``.
        group_size: tokens per attention group, ``(gD, gH, gW)``.
        intervals: the global scope's padding interval per stage (the official 8/4/2/1); the decoder uses
            the interval of the encoder stage at its resolution.
        mlp_ratio: MLP hidden size over the channels.
        qkv_bias: bias in the qkv projections.
        qk_scale: softmax scale, default head_dim ** -0.5.
        drop_rate: dropout after the projections and the embedding.
        attn_drop_rate: dropout on the attention weights (then the attention runs on the reference backend).
        drop_path_rate: stochastic depth, rising linearly to this over the encoder's blocks (each decoder stage
            reuses its encoder stage's rates, as the official code).
        deep_supervision: ``forward`` returns ``(full, half)`` resolution logits (the official default) instead
            of the full-resolution ones.
        backend: medkernels backend of every attention (None = automatic; see :attr:`backend`).
        device, dtype: of the parameters.

    Shapes:
        input ``[B, in_channels, D, H, W]``, any size; output ``[B, num_classes, D, H, W]`` (and with deep
        supervision ``[B, num_classes, ceil(D/2), ceil(H/2), ceil(W/2)]``).
    """

    _kernel_types = (DilatedAttention3d,)  # their backend is the model's (KernelBackend)

    def __init__(
        self,
        num_classes: int = 14,
        in_channels: int = 1,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        patch_size: int | Sequence[int] = (2, 4, 4),
        group_size: int | Sequence[int] = (2, 8, 8),
        intervals: Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        deep_supervision: bool = False,
        *,
        backend: str | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        depths, num_heads, intervals = tuple(depths), tuple(num_heads), tuple(intervals)
        L = len(depths)
        if L < 2 or len(num_heads) != L or len(intervals) != L:
            raise ValueError(
                f"DFormer: depths, num_heads and intervals need one entry per stage (at least 2 stages), got "
                f"{depths=}, {num_heads=}, {intervals=}"
            )
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels), ("embed_dim", embed_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DFormer: {name} must be a positive int, got {v!r}")
        if any(d < 1 for d in depths) or any(iv < 1 for iv in intervals):
            raise ValueError(f"DFormer: depths and intervals must be >= 1, got {depths=}, {intervals=}")
        for i, h in enumerate(num_heads):
            if h < 1 or (embed_dim * 2**i) % h:
                raise ValueError(f"DFormer: num_heads[{i}] ({h}) must divide the stage's {embed_dim * 2**i} channels")
        if deep_supervision and L < 3:
            raise ValueError("DFormer: deep supervision needs at least 3 stages (a decoder map of 2C channels)")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.depths, self.num_heads, self.intervals = depths, num_heads, intervals
        self.mlp_ratio = mlp_ratio
        self.patch_size = _triple("patch_size", patch_size, "voxels per patch")
        self.group_size = _triple("group_size", group_size, "tokens per group")
        self.deep_supervision = deep_supervision
        factory = {"device": device, "dtype": dtype}
        self.model_down = _Backbone(
            in_channels,
            embed_dim,
            depths,
            num_heads,
            self.patch_size,
            self.group_size,
            intervals,
            mlp_ratio,
            qkv_bias,
            qk_scale,
            drop_rate,
            attn_drop_rate,
            drop_path_rate,
            backend,
            **factory,
        )
        self.final = nn.ModuleList(
            _SegHead(embed_dim * 2**i, num_classes, self.patch_size, **factory) for i in range(L - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Segment a batch of volumes.

        Args:
            x: ``[B, in_channels, D, H, W]``, any spatial size.

        Returns:
            logits ``[B, num_classes, D, H, W]``, or with ``deep_supervision`` ``(full, half)`` where half is
            ``[B, num_classes, ceil(D/2), ceil(H/2), ceil(W/2)]``.
        """
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"DFormer: expected [B, {self.in_channels}, D, H, W], got {tuple(x.shape)}")
        size = x.shape[2:]
        pad = [(p - n % p) % p for n, p in zip(size, self.patch_size)]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        feats, half = self.model_down(x, self.deep_supervision)
        out = self.final[0](feats)
        if tuple(out.shape[2:]) != tuple(size):
            out = out[:, :, : size[0], : size[1], : size[2]]
        if not self.deep_supervision:
            return out
        aux = self.final[1](half)
        want = [-(-n // 2) for n in size]
        return out, aux[:, :, : want[0], : want[1], : want[2]]

    def num_params(self, trainable_only: bool = False) -> int:
        """The number of parameters.

        Args:
            trainable_only: count only those requiring gradients.

        Returns:
            The count (50,557,248 for the paper's model at 14 classes).
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def macs(self, input_size: Sequence[int] = (1, 1, 64, 128, 128)) -> int:
        """Multiply-accumulates of one forward at ``input_size = (B, C_in, D, H, W)``, counted the way D-Former's
        58.8 GMACs were (fvcore's rule on the official code): one per multiply-accumulate of every Conv3d and
        Linear and of both attention matmuls (``q @ k^T``, ``attn @ v``), plus 5 per LayerNorm element;
        activations, softmax, additions and the scale are not counted. As the official code pads before
        its qkv projection, the qkv and output projections and the attention count the padded tokens (none
        at the paper's size). The heads this model returns are counted (the full-resolution one, and with deep
        supervision the half-resolution one, as the official count: the third head's output is discarded).
        The count is of the architecture, not of this implementation (the fused head, for one, does
        different arithmetic).

        Args:
            input_size: ``(B, C_in, D, H, W)`` of the input.

        Returns:
            The multiply-accumulates (58.80e9 for the paper's model at 1x1x64x128x128 with deep supervision,
            53.49e9 without).

        Raises:
            ValueError: ``input_size`` is not 5 entries with ``C_in == in_channels``.
        """
        B, Cin, *size = input_size
        if Cin != self.in_channels or len(size) != 3:
            raise ValueError(f"DFormer.macs: input_size must be (B, {self.in_channels}, D, H, W), got {input_size}")
        gs, ph = self.group_size, self.patch_size
        P = ph[0] * ph[1] * ph[2]
        L, C0, K = len(self.depths), self.embed_dim, self.num_classes

        def count(g: Sequence[int]) -> int:
            return B * g[0] * g[1] * g[2]

        def attention(g: Sequence[int], glob: bool, iv: int, C: int) -> int:
            """qkv and output projections and both attention matmuls, over the padded tokens."""
            D, H, W = g
            if H < gs[1] or W < gs[2]:  # full attention
                n_pad, per_group = D * H * W, D * H * W
            elif not glob:
                n_pad = math.prod(-(-n // k) * k for n, k in zip(g, gs))
                per_group = math.prod(gs)
            else:
                padded = [-(-n // iv) * iv for n in g]
                I = official_global_intervals(g, gs, iv)
                extent = [-(-p // i) for p, i in zip(padded, I)]
                n_pad, per_group = math.prod(i * e for i, e in zip(I, extent)), math.prod(extent)
            return B * n_pad * (4 * C * C + 2 * C * per_group)

        def stage(g: Sequence[int], i: int) -> int:
            C, N = C0 * 2**i, count(g)
            hidden = int(C * self.mlp_ratio)
            m = 27 * N * C  # position encoding
            for j in range(self.depths[i]):
                m += 10 * N * C + 2 * N * C * hidden + attention(g, j % 2 == 1, self.intervals[i], C)
            return m

        def head(g: Sequence[int], C: int) -> int:
            N = count(g)
            return N * C * P * C + 5 * N * P * C + N * P * C * K

        g = [-(-n // p) for n, p in zip(size, ph)]
        total = count(g) * C0 * (Cin * P + 5)  # patch embedding and its norm
        grids = []
        for i in range(L):
            grids.append(g)
            total += stage(g, i)
            if i < L - 1:
                g = [-(-n // 2) for n in g]
                total += count(g) * 8 * C0 * 2**i * (5 + 2 * C0 * 2**i)  # merging: norm(8C), Linear(8C -> 2C)
        total += 5 * count(g) * C0 * 2 ** (L - 1)
        for inx in range(L):
            i = L - 1 - inx
            C = C0 * 2**i
            if inx > 0:
                total += count(g) * 2 * C * C + stage(g, i)  # concatenation's Linear(2C -> C), stage
            if inx < L - 1:  # patch expanding: Linear(C -> 4C), norm(C/2) over 8 sub-voxels
                total += count(g) * C * 4 * C + 5 * count(g) * 4 * C
                g = grids[i - 1]
        total += 5 * count(g) * C0 + head(g, C0)
        if self.deep_supervision:
            total += head(grids[1], 2 * C0)
        return total


@register_model
def dformer(num_classes: int = 14, in_channels: int = 1, **kwargs) -> DFormer:
    """D-Former as the paper and the official code configure it (embed_dim 96, depths (2, 2, 6, 2), heads
    (3, 6, 12, 24), patch (2, 4, 4), group (2, 8, 8), intervals (8, 4, 2, 1)): 50.56M parameters at 14
    classes. Keyword arguments as :class:`DFormer`."""
    return DFormer(num_classes, in_channels, **kwargs)
