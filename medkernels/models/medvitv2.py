"""MedViTV2: 2D medical image classification with KAN-integrated transformers and dilated neighborhood attention.

Manzari et al. 2025, "MedViTV2: Medical Image Classification with KAN-Integrated Transformers and Dilated
Neighborhood Attention" (arXiv 2502.13693); official code github.com/Omid-Nejati/MedViTV2 (``MedViT.py``).
Measured speed and memory: docs/medvitv2.md.

Architecture (input ``[B, 3, H, W]``, logits ``[B, num_classes]``):

- stem, stride 4: ConvBNReLU 3x3 (3 -> 64, s2), (64 -> 32), (32 -> 64), (64 -> 64, s2);
- four stages at H/4, H/8, H/16, H/32 (down-sampling in the first block of stages 2-4):
  stage 1 LFP x d1; stage 2 LFP x (d2 - 1), GFP; stage 3 (LFP, LFP, GFP) x d3/3; stage 4 GFP x d4
  (blocks in :mod:`medkernels.nn.medvit`);
- head: BatchNorm2d -> global average pool -> Linear (``norm``, ``proj_head.0``).

| variant | channels per stage | depths | drop path | params (1000 classes) | GFLOPs at 224 (paper's rule) |
|---|---|---|---|---|---|
| ``medvitv2_tiny`` | 64/128/192/384 | 2/2/6/1 | 0.1 | 10.74M | 5.14 |
| ``medvitv2_small`` | 64/128/256/512 | 2/2/6/2 | 0.1 | 27.34M | 7.68 (paper: 7.6) |
| ``medvitv2_base`` | 96/192/384/768 | 2/2/6/2 | 0.2 | 60.86M | 15.67 |
| ``medvitv2_large`` | 96/256/512/1024 | 2/2/6/2 | 0.2 | 107.42M | 25.77 |

(The official models count 11.72M / 30.09M / 67.00M / 118.29M with their unused GFP ``conv``; GFLOPs = 2 x MACs
without the neighborhood attention's products, :meth:`MedViTV2.flops`.)

Head dim 32, E-MHSA spatial reductions (8, 4, 2, 1), mix ratio 0.75, LFFN expansion 3, KAN ``[C, 2C, C]``.

Two forms, one set of parameters (the official names, so official state_dicts load):

- default (``official_layout=False``), the paper's architecture: dilated neighborhood attention (DiNA) with
  dilations (8, 4, 2, 1) per stage (Table 12's best setting), and the NCHW maps permuted to ``[B, H, W, C]``
  before the attention and before the KAN, so that both act on each pixel's channel vector.
- ``official_layout=True``, the official code's computation, with which its published checkpoints were
  trained: plain NA (natten 0.17 with ``dilation=None``, i.e. 1), and the NCHW buffers ``reshape``d to
  ``[B, H, W, C]`` before the attention (and back with ``reshape(B, C, H, W)``) and to ``[-1, C]`` before the
  KAN, without a permute: the attention and the KAN then see rows of the flattened NCHW buffer, not pixels.
  The outputs equal the official code's (float32, to rounding) wherever that code runs.

Where the official code cannot run, both forms extend it the same way (documented choices, not the official
behaviour): a neighborhood attention window larger than its map is fitted to it (dilation lowered to
``L // kernel``, then the kernel to ``L``; :class:`medkernels.nn.FittedNeighborhoodAttention2D`) — natten
raises for maps smaller than ``kernel * dilation``, so the official code needs inputs of at least 112x112, the
paper's dilations at least 224x224 (smaller inputs get smaller dilations); E-MHSA pools all tokens when a map
has fewer than ``sr**2``; and the KAN's output is reshaped to ``(B, C, H, W)`` where the official code's
``(b, d, t, t)`` needs a square map. Maps of one pixel per axis at an attention block (inputs under 17 pixels)
raise ValueError.

Not built: the official GFP's ``conv`` (an LFFN it constructs and never calls; its parameters are in the
official state_dicts and parameter counts). :meth:`MedViTV2.checkpoint_filter` drops them on load with a note.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medkernels._typing import Backend, Device, DType
from medkernels.nn.kan import FasterKANLayer
from medkernels.nn.medvit import (
    NORM_EPS,
    ConvBNReLU,
    EfficientMHSA,
    FittedNeighborhoodAttention2D,
    GFPBlock,
    LFPBlock,
)

from ._backend import KernelBackend
from ._flops import forward_flops
from ._registry import register_model

__all__ = ["MedViTV2", "medvitv2_tiny", "medvitv2_small", "medvitv2_base", "medvitv2_large"]

PAPER_DILATIONS = (8, 4, 2, 1)


class MedViTV2(KernelBackend, nn.Module):
    """MedViTV2 (see the module docstring for the architecture and the two layouts).

    Args:
        dims: channels of the four stages.
        depths: blocks per stage; ``depths[2]`` a multiple of 3.
        num_classes: logits.
        in_chans: input channels.
        stem_chs: the stem's three widths (64, 32, 64).
        drop_path_rate: stochastic depth, rising linearly from 0 over the blocks.
        head_dim: channels per attention head.
        sr_ratios: E-MHSA spatial reductions per stage.
        dilations: neighborhood-attention dilation per stage; default the paper's (8, 4, 2, 1), or (1, 1, 1, 1)
            with ``official_layout`` (the official code's plain NA).
        na_kernel_size: the neighborhood attention's window (7).
        mix_block_ratio: GFP's E-MHSA share of the channels.
        attn_drop_rate: E-MHSA's attention-weight dropout (the official ``attn_drop``; 0 in the paper).
        drop_rate: E-MHSA's projection dropout and, as in the official code (its ``drop``), the LFP
            neighborhood attention's attention-weight dropout (0 in the paper).
        official_layout: the official code's computation (see the module docstring).
        channels_last: run the network in the channels-last memory format (the input is converted once; the
            NCHW ``[B, C, H, W]`` shapes and the results are unchanged). Default True: on CPU the (depthwise
            and grouped) convolutions' backward is ~10-50x faster than in the contiguous format, and the
            permutes to ``[B, H, W, C]`` before the attention and the KAN become free views (float64 is the
            exception: its CPU convolutions are faster contiguous). Settable (attribute ``channels_last``).
        backend: medkernels backend of the attention and KAN kernels (None = automatic); settable later
            through :attr:`backend`.
        device, dtype: of the parameters.

    Shapes:
        ``[B, in_chans, H, W] -> [B, num_classes]``. Use batches of at least 2 in training (BatchNorm over a
        single value raises at small maps, as in the official code).
    """

    _kernel_types = (FittedNeighborhoodAttention2D, FasterKANLayer)  # their backend is the model's (KernelBackend)

    def __init__(
        self,
        dims: Sequence[int] = (64, 128, 256, 512),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_classes: int = 1000,
        in_chans: int = 3,
        stem_chs: Sequence[int] = (64, 32, 64),
        drop_path_rate: float = 0.1,
        head_dim: int = 32,
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        dilations: Sequence[int] | None = None,
        na_kernel_size: int = 7,
        mix_block_ratio: float = 0.75,
        attn_drop_rate: float = 0.0,
        drop_rate: float = 0.0,
        *,
        official_layout: bool = False,
        channels_last: bool = True,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if len(dims) != 4 or len(depths) != 4 or len(sr_ratios) != 4:
            raise ValueError(f"{name}: dims, depths and sr_ratios need 4 entries, got {dims}, {depths}, {sr_ratios}")
        if depths[0] < 1 or depths[1] < 1 or depths[2] < 3 or depths[2] % 3 or depths[3] < 1:
            raise ValueError(
                f"{name}: depths must be >= (1, 1, 3, 1) with depths[2] a multiple of 3 (LFP, LFP, GFP), got {depths}"
            )
        if dilations is None:
            dilations = (1, 1, 1, 1) if official_layout else PAPER_DILATIONS
        if len(dilations) != 4 or any(int(d) < 1 for d in dilations):
            raise ValueError(f"{name}: dilations must be 4 positive ints, got {dilations}")
        if num_classes < 1:
            raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
        factory = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.official_layout = official_layout
        self.channels_last = channels_last
        self.dilations = tuple(int(d) for d in dilations)
        self.stem = nn.Sequential(
            ConvBNReLU(in_chans, stem_chs[0], 3, 2, **factory),
            ConvBNReLU(stem_chs[0], stem_chs[1], 3, 1, **factory),
            ConvBNReLU(stem_chs[1], stem_chs[2], 3, 1, **factory),
            ConvBNReLU(stem_chs[2], stem_chs[2], 3, 2, **factory),
        )
        kinds = [
            ["lfp"] * depths[0],
            ["lfp"] * (depths[1] - 1) + ["gfp"],
            ["lfp", "lfp", "gfp"] * (depths[2] // 3),
            ["gfp"] * depths[3],
        ]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        blocks: list[nn.Module] = []
        channels = stem_chs[-1]
        for stage, (dim, stage_kinds) in enumerate(zip(dims, kinds)):
            for i, kind in enumerate(stage_kinds):
                stride = 2 if stage > 0 and i == 0 else 1
                common = {"official_layout": official_layout, "backend": backend, **factory}
                if kind == "lfp":
                    block: nn.Module = LFPBlock(
                        channels,
                        dim,
                        kernel_size=7 if stage == 0 else 3,
                        stride=stride,
                        drop_path=dpr[len(blocks)],
                        head_dim=head_dim,
                        na_kernel_size=na_kernel_size,
                        dilation=self.dilations[stage],
                        attn_drop=drop_rate,  # the official LFP passes its `drop` as the NA's attn_drop
                        **common,
                    )
                else:
                    block = GFPBlock(
                        channels,
                        dim,
                        drop_path=dpr[len(blocks)],
                        stride=stride,
                        sr_ratio=sr_ratios[stage],
                        head_dim=head_dim,
                        mix_block_ratio=mix_block_ratio,
                        attn_drop=attn_drop_rate,
                        drop=drop_rate,
                        **common,
                    )
                blocks.append(block)
                channels = dim
        self.features = nn.Sequential(*blocks)
        self.num_features = channels
        self.norm = nn.BatchNorm2d(channels, eps=NORM_EPS, **factory)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.proj_head = nn.Sequential(nn.Linear(channels, num_classes, **factory))
        self._init_weights()

    def _init_weights(self) -> None:
        # The official initialisation: every Linear (the KAN's spline_linear included) and Conv2d
        # trunc_normal(std 0.02) with zero biases, norms weight 1 and bias 0; the attention's rpb keeps
        # natten's trunc_normal(std 0.02).
        for m in self.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # --- forward --------------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, in_chans, H, W]``. Returns the last stage's map ``[B, C4, ceil(H/32), ceil(W/32)]``
        (before the head's BatchNorm)."""
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__}: expected an image batch [B, C, H, W], got {tuple(x.shape)}")
        if self.channels_last:  # every later map inherits the format (convolutions, norms, the blocks' adds)
            x = x.contiguous(memory_format=torch.channels_last)
        return self.features(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, C4, h, w]``. Returns logits ``[B, num_classes]``."""
        return self.proj_head(torch.flatten(self.avgpool(self.norm(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, in_chans, H, W]``. Returns logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x))

    # --- sizes ----------------------------------------------------------------------------------------

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (every ``nn.Parameter``, the KAN's frozen grids too: 8 per layer, as the
        official count); the official model has also its unused GFP ``conv`` (see the module docstring).

        Args:
            trainable_only: count only those requiring gradients (the KAN grids do not).
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops(self, img_size: int | Sequence[int] = 224, batch_size: int = 1) -> int:
        """Floating-point operations of one forward pass, counted the paper's way.

        Rule: 2 x the multiply-accumulates of every convolution and linear layer (the attention's qkv and
        projection, the head, the E-MHSA projections), of E-MHSA's two attention products (``q k^T`` and
        ``attn v``), and of the KAN's spline products (``in * 8 -> out`` per token); the neighborhood
        attention's own products (natten's kernels, which the paper's counter skips) and every norm,
        activation, pooling and elementwise operation are not counted. Counted on the meta device (no
        compute), at the given input size.

        Args:
            img_size: ``H`` or ``(H, W)`` of the input.
            batch_size: images.

        Returns:
            FLOPs (e.g. ``flops() / 1e9`` GFLOPs).
        """
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)

        def mhsa(m, inputs, out):
            B, N, C = out.shape
            r = min(m.sr_ratio**2, N) if m.sr_ratio > 1 else 1
            return 2 * 2 * B * N * (N // r) * C  # q k^T and attn v, over all heads

        def kan(m, inputs, out):
            return 2 * out.numel() * m.input_dim * m.rbf.num_grids

        x = torch.empty(batch_size, self.stem[0].conv.in_channels, h, w, device="meta")
        return forward_flops(self, [x], {EfficientMHSA: mhsa, FasterKANLayer: kan})

    # --- official checkpoints -------------------------------------------------------------------------

    def checkpoint_filter(self, state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Maps an official MedViTV2 state_dict onto this model (used by
        :func:`medkernels.models.load_checkpoint`): drops the GFP blocks' ``conv.*`` (the LFFN the official
        GFP builds and never calls), with a note. Everything else loads under its own name."""
        gfp = {str(i) for i, b in enumerate(self.features) if isinstance(b, GFPBlock)}
        pattern = re.compile(r"features\.(\d+)\.conv\.")
        out: dict[str, torch.Tensor] = {}
        dropped_tensors = dropped_params = 0
        for k, v in state_dict.items():
            m = pattern.match(k)
            if m is not None and m.group(1) in gfp:
                dropped_tensors += 1
                dropped_params += v.numel() if v.is_floating_point() else 0
                continue
            out[k] = v
        notes = []
        if dropped_tensors:
            notes.append(
                f"dropped {dropped_tensors} tensors ({dropped_params} values) under features.<GFP>.conv: the "
                "official GFP builds that LocalityFeedForward but never uses it"
            )
        return out, notes

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, dilations={self.dilations}, official_layout={self.official_layout}, "
            f"channels_last={self.channels_last}"
        )


_VARIANTS = {
    "tiny": ((64, 128, 192, 384), (2, 2, 6, 1), 0.1),
    "small": ((64, 128, 256, 512), (2, 2, 6, 2), 0.1),
    "base": ((96, 192, 384, 768), (2, 2, 6, 2), 0.2),
    "large": ((96, 256, 512, 1024), (2, 2, 6, 2), 0.2),
}


def _build(variant: str, num_classes: int, official_layout: bool, kwargs: dict) -> MedViTV2:
    dims, depths, dpr = _VARIANTS[variant]
    kwargs.setdefault("drop_path_rate", dpr)
    return MedViTV2(dims, depths, num_classes, official_layout=official_layout, **kwargs)


@register_model
def medvitv2_tiny(num_classes: int = 1000, official_layout: bool = False, **kwargs) -> MedViTV2:
    """MedViTV2-tiny: channels 64/128/192/384, depths 2/2/6/1 (10.74M parameters at 1000 classes).

    Args:
        num_classes: logits.
        official_layout: the official code's computation (loads and reproduces its checkpoints).
        **kwargs: :class:`MedViTV2`'s other arguments (``drop_path_rate``, ``dilations``, ``backend``, ...).
    """
    return _build("tiny", num_classes, official_layout, kwargs)


@register_model
def medvitv2_small(num_classes: int = 1000, official_layout: bool = False, **kwargs) -> MedViTV2:
    """MedViTV2-small: channels 64/128/256/512, depths 2/2/6/2 (27.34M parameters at 1000 classes).

    Args: as :func:`medvitv2_tiny`.
    """
    return _build("small", num_classes, official_layout, kwargs)


@register_model
def medvitv2_base(num_classes: int = 1000, official_layout: bool = False, **kwargs) -> MedViTV2:
    """MedViTV2-base: channels 96/192/384/768, depths 2/2/6/2 (60.86M parameters at 1000 classes).

    Args: as :func:`medvitv2_tiny`.
    """
    return _build("base", num_classes, official_layout, kwargs)


@register_model
def medvitv2_large(num_classes: int = 1000, official_layout: bool = False, **kwargs) -> MedViTV2:
    """MedViTV2-large: channels 96/256/512/1024, depths 2/2/6/2 (107.42M parameters at 1000 classes).

    Args: as :func:`medvitv2_tiny`.
    """
    return _build("large", num_classes, official_layout, kwargs)
