"""DCT-HistoTransformer: a lightweight histopathology classifier of DCT-Conv blocks.

Ranjbar, Mohebbi, Cherakhloo, Vosoughi Vahdat 2024, "DCT-HistoTransformer: Efficient Lightweight Vision
Transformer with DCT Integration for histopathological image analysis" (arXiv 2410.19166): breast-cancer H&E
patches (BreakHis) at 224x224, 96.00 +- 0.48% binary (benign / malignant) and 87.85 +- 0.93% eight-class
(subtype) accuracy. No official code is published (2026-12). What the paper fixes: blocks with two parallel
pathways, DCT attention (2D DCT-II, high frequencies dropped, self-attention over the kept coefficients) and
MobileConv (a MobileNet-style convolution pathway), fused; a lightweight model. Everything else below is our
choice, each an argument (the block's own choices: :mod:`medkernels.nn.dct_conv`).

Architecture (input ``[B, 3, H, W]``, logits ``[B, num_classes]``):

- ``stem``: conv 3x3 stride 2 (3 -> 32, no bias), BatchNorm, ReLU6 (H/2);
- four stages at H/4, H/8, H/16, H/32, each a MobileConv with stride 2 (``stages.<i>.downsample``: the
  channel change and the down-sampling, as MobileNetV2 / MobileViT do) and ``depths[i]`` DCT-Conv blocks
  (``stages.<i>.blocks.<j>``): DCT attention in every stage, since keeping a quarter of the coefficients makes
  attention affordable even at 56x56 (784 tokens instead of 3136);
- head: norm, global average pool, dropout, Linear (``norm``, ``head``).

Default ``dct_histoformer``: channels 64/128/192/256, depths 2/2/4/2, heads of 32 channels (2/4/6/8), keep 0.25
(kept blocks 28x28, 14x14, 7x7, 4x4 at 224x224), MobileConv expansion 4, fusion "sum", BatchNorm, ReLU6, no drop
path: 4,527,906 parameters at 2 classes (4,529,448 at 8) and 2.635 GFLOPs at 224x224
(:meth:`DCTHistoTransformer.flops`'s rule). The paper reports neither figure in the text we could reach (its
abstract and summaries: "lightweight", "significantly reducing computational costs").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medkernels._typing import Backend, Device, DType
from medkernels.nn.dct_attention import DCTAttention
from medkernels.nn.dct_conv import FUSIONS, NORMS, DCTConvBlock, MobileConv, check_act, make_act, make_norm2d

from ._backend import KernelBackend
from ._flops import forward_flops
from ._registry import register_model

__all__ = ["DCTHistoTransformer", "dct_histoformer"]


class _Stem(nn.Module):
    """conv 3x3 stride 2 (no bias) -> norm -> act."""

    def __init__(self, in_chans, out_chans, norm_layer, act_layer, *, device=None, dtype=None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, 3, 2, padding=1, bias=False, device=device, dtype=dtype)
        self.bn = make_norm2d(norm_layer, out_chans, device=device, dtype=dtype)
        self.act = make_act(act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class DCTHistoTransformer(KernelBackend, nn.Module):
    """DCT-HistoTransformer (see the module docstring for the architecture and what is our choice).

    Args:
        dims: channels of the four stages (each divisible by its head count).
        depths: DCT-Conv blocks per stage (>= 0 each; the stage's down-sampling MobileConv always runs).
        num_classes: logits (2: BreakHis benign / malignant; 8: its subtypes).
        in_chans: input channels.
        stem_channels: the stem convolution's output channels.
        head_dim: channels per attention head (the heads of stage i are ``dims[i] // head_dim``).
        keep: the DCT attention's kept coefficients, for every stage or one entry per stage: a float in
            (0, 1] (the fraction kept, default 0.25) or ``(kh, kw)`` / an int (see :class:`DCTAttention`).
        expand_ratio: the DCT-Conv blocks' MobileConv expansion.
        downsample_expand_ratio: the down-sampling MobileConvs' expansion.
        kernel_size: the depthwise kernel of every MobileConv.
        fusion: how a block fuses its pathways: ``"sum"`` (default), ``"concat"`` or ``"gate"``.
        norm_layer: ``"batch"`` (default) or ``"layer"``, for every norm of the network.
        act_layer: ``"relu6"`` (default), ``"relu"``, ``"silu"``, ``"gelu"``, ``"hardswish"`` or a class.
        qkv_bias: bias in the attention's qkv projections.
        drop_rate: dropout before the classifier.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth, rising linearly from 0 over the DCT-Conv blocks.
        channels_last: run in the channels-last memory format (the input is converted once; shapes and results
            are unchanged). Default False: on CPU this model's training step measured no faster in it (its
            BatchNorms are slower there, its depthwise convolutions hardly faster). Settable.
        backend: medkernels backend of the DCTs (None = automatic); settable later (:attr:`backend`).
        device, dtype: of the parameters.

    Shapes:
        ``[B, in_chans, H, W] -> [B, num_classes]``; any H, W >= 1 with fractional ``keep`` (maps are
        ``ceil``-halved five times). Train with batches of at least 2 with BatchNorm.
    """

    _kernel_types = (DCTAttention,)  # their backend is the model's (KernelBackend)

    def __init__(
        self,
        dims: Sequence[int] = (64, 128, 192, 256),
        depths: Sequence[int] = (2, 2, 4, 2),
        num_classes: int = 2,
        in_chans: int = 3,
        stem_channels: int = 32,
        head_dim: int = 32,
        keep: float | int | tuple[int, int] | Sequence = 0.25,
        expand_ratio: float = 4.0,
        downsample_expand_ratio: float = 4.0,
        kernel_size: int = 3,
        fusion: str = "sum",
        *,
        norm_layer: str = "batch",
        act_layer: str | type[nn.Module] = "relu6",
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        channels_last: bool = False,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        dims, depths = tuple(dims), tuple(depths)
        if len(dims) != 4 or len(depths) != 4:
            raise ValueError(f"{name}: dims and depths need 4 entries, got {dims}, {depths}")
        if any(int(d) < 1 for d in dims) or any(int(d) < 0 for d in depths):
            raise ValueError(f"{name}: dims must be >= 1 and depths >= 0, got {dims}, {depths}")
        if head_dim < 1 or any(d % head_dim for d in dims):
            raise ValueError(f"{name}: head_dim ({head_dim}) must divide every entry of dims {dims}")
        if num_classes < 1:
            raise ValueError(f"{name}: num_classes must be >= 1, got {num_classes}")
        if in_chans < 1 or stem_channels < 1:
            raise ValueError(f"{name}: in_chans and stem_channels must be >= 1, got {in_chans}, {stem_channels}")
        if fusion not in FUSIONS:
            raise ValueError(f"{name}: fusion must be one of {FUSIONS}, got {fusion!r}")
        if norm_layer not in NORMS:
            raise ValueError(f"{name}: norm_layer must be one of {NORMS}, got {norm_layer!r}")
        check_act(name, act_layer)
        rates = {"drop_rate": drop_rate, "attn_drop_rate": attn_drop_rate, "drop_path_rate": drop_path_rate}
        for arg, v in rates.items():
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name}: {arg} must be in [0, 1), got {v}")
        per_stage = isinstance(keep, (list, tuple)) and len(keep) == 4  # (kh, kw) has 2 entries
        keeps = tuple(keep) if per_stage else (keep,) * 4
        factory = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.dims, self.depths = dims, depths
        self.keeps = keeps
        self.channels_last = channels_last
        self.stem = _Stem(in_chans, stem_channels, norm_layer, act_layer, **factory)
        dpr = torch.linspace(0, drop_path_rate, max(1, sum(depths))).tolist()
        stages, cin, k = [], stem_channels, 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            down = MobileConv(
                cin,
                dim,
                downsample_expand_ratio,
                kernel_size,
                stride=2,
                norm_layer=norm_layer,
                act_layer=act_layer,
                **factory,
            )
            blocks = []
            for _ in range(depth):
                try:
                    block = DCTConvBlock(
                        dim,
                        dim // head_dim,
                        keeps[i],
                        expand_ratio,
                        kernel_size,
                        fusion,
                        norm_layer=norm_layer,
                        act_layer=act_layer,
                        qkv_bias=qkv_bias,
                        attn_drop=attn_drop_rate,
                        drop_path=dpr[k],
                        backend=backend,
                        **factory,
                    )
                except ValueError as exc:  # name the model's argument (DCTAttention's says "keep" too)
                    raise ValueError(f"{name}: stage {i}: {exc}") from exc
                blocks.append(block)
                k += 1
            stages.append(_Stage(down, blocks))
            cin = dim
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.norm = make_norm2d(norm_layer, cin, **factory)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(cin, num_classes, **factory)
        self._init_weights()

    def _init_weights(self) -> None:
        # MobileNetV2 / timm: convolutions kaiming-normal (fan_out), Linear trunc_normal(0.02) with zero bias,
        # norms weight 1 bias 0 (gates stay 0: an even mix)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # --- forward --------------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, in_chans, H, W]``. Returns the last stage's map ``[B, dims[3], H/32, W/32]`` (ceil),
        before the head's norm."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{type(self).__name__}: expected [B, {self.in_chans}, H, W], got {tuple(x.shape)}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, dims[3], h, w]``. Returns logits ``[B, num_classes]``."""
        return self.head(self.head_drop(torch.flatten(self.avgpool(self.norm(x)), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, in_chans, H, W]``. Returns logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x))

    # --- sizes ----------------------------------------------------------------------------------------

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (BatchNorm statistics are buffers, not counted).

        Args:
            trainable_only: count only those requiring gradients.
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops(self, img_size: int | Sequence[int] = 224, batch_size: int = 1) -> int:
        """Floating-point operations of one forward pass: 2 x multiply-accumulates (MACs).

        Rule: the MACs of every convolution and linear layer (the DCT attention's qkv and output projection on
        the ``n = kh * kw`` kept coefficients, the head), of the attention's two products (``q k^T`` and
        ``attn v``: ``2 n^2 C`` per image), and of the DCTs as the matmuls of their separable product, in the
        order the op computes them: per channel, the forward ``Mh (kh x H) @ X (H x W)`` then ``@ Mw^T (W x kw)``
        (``kh H W + kh W kw``), the inverse ``Mh' (H x kh) @ A (kh x kw)`` then ``@ Mw'^T (kw x W)``
        (``H kh kw + H kw W``). Norms, activations, softmax, pooling and additions are not counted. Counted on
        the meta device (no compute).

        Args:
            img_size: ``H`` or ``(H, W)`` of the input.
            batch_size: images.

        Returns:
            FLOPs (``flops() / 1e9`` GFLOPs).
        """
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)

        def dct_attention(m, inputs, out):
            B, C, H, W = inputs[0].shape
            macs = 0
            kh, kw = m.kept(H, W)
            n = kh * kw
            macs += B * n * C * C  # the output projection (F.linear on the kept coefficients)
            macs += 2 * B * n * n * C  # q k^T and attn v over all heads
            macs += B * C * (kh * H * W + kh * W * kw)  # dct2d with keep
            macs += B * C * (H * kh * kw + H * kw * W)  # idct2d to (H, W)
            return 2 * macs

        x = torch.empty(batch_size, self.in_chans, h, w, device="meta")
        return forward_flops(self, [x], {DCTAttention: dct_attention})

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, keep={self.keeps}, channels_last={self.channels_last}"


@register_model
def dct_histoformer(num_classes: int = 2, **kwargs) -> DCTHistoTransformer:
    """DCT-HistoTransformer: channels 64/128/192/256, depths 2/2/4/2, keep 0.25, fusion "sum" (4.53M parameters,
    2.64 GFLOPs at 224x224).

    Args:
        num_classes: logits: 2 (default) for BreakHis benign / malignant, 8 for its subtypes.
        **kwargs: :class:`DCTHistoTransformer`'s other arguments (``keep``, ``fusion``, ``drop_path_rate``,
            ``backend``, ...).
    """
    return DCTHistoTransformer(num_classes=num_classes, **kwargs)
