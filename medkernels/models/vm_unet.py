"""VM-UNet: a U-shaped segmentation network of VMamba's VSS blocks.

Ruan & Xiang 2024, "VM-UNet: Vision Mamba UNet for Medical Image Segmentation" (arXiv 2402.02491); official code
github.com/JCruan519/VM-UNet (``models/vmunet/vmunet.py``: ``VMUNet``; ``models/vmunet/vmamba.py``: ``VSSM`` and
its parts; commit 43c495b, read 2026-12). Blocks: :class:`medkernels.nn.VSSBlock` / :class:`medkernels.nn.SS2D`
(the four-direction 2D selective scan in one ``multi_order_selective_scan`` call).

Architecture (input ``[B, in, H, W]`` with H, W multiples of 32; output ``[B, num_classes, H, W]``), the
official ``VSSM`` with dims 96/192/384/768, d_state 16, LayerNorm (eps 1e-5) everywhere:

- ``patch_embed``: Conv2d(in -> 96, kernel = stride = 4) -> channels-last -> LayerNorm;
- encoder ``layers[i]`` (VSSLayer): ``depths[i]`` VSS blocks at dims[i], then (i < 3) PatchMerging2D: the 2x2
  neighbours concatenated in the order (0,0), (1,0), (0,1), (1,1) -> LayerNorm(4C) -> Linear(4C -> 2C, no bias);
- decoder ``layers_up[i]`` (VSSLayer_up) at 768/384/192/96: (i > 0) PatchExpand2D on ``x + skip`` first
  (Linear(2C -> 4C, no bias), each token's 4C split into 2x2 sub-pixels of C, LayerNorm(C)), then
  ``depths_decoder[i]`` VSS blocks; the skips are the encoder's inputs to ``layers[3]``, ``layers[2]``,
  ``layers[1]`` (the patch-embedding output is collected but unused, as in the official code);
- ``final_up`` (Final_PatchExpand2D): Linear(96 -> 384, no bias), 4x4 sub-pixels of 24 channels, LayerNorm(24);
  ``final_conv``: Conv2d(24 -> num_classes, 1);
- a 1-channel input is repeated to 3 channels; with ``num_classes == 1`` the output is a sigmoid, else logits
  (the official ``VMUNet.forward``).

Stochastic depth: linear 0 -> ``drop_path_rate`` over the encoder blocks, and the same ramp reversed over the
decoder blocks (the official ``dpr`` / ``dpr_decoder``). Initialisation as the official: Linear trunc_normal
(std 0.02, bias 0), LayerNorm (1, 0), convolutions and the SS2D parameters as built.

| configuration | depths / decoder | params (9 classes) | params (1 class) | GFLOPs at 1x3x256x256 |
|---|---|---|---|---|
| ``vm_unet`` (the official training configs, ISIC and Synapse) | 2,2,2,2 / 2,2,2,1 | 27,427,761 | 27,427,561 | 13.23 |
| ``VMUNet()`` (the official class defaults) | 2,2,9,2 / 2,9,2,2 | 44,274,033 | 44,273,833 | 23.97 |

(Parameters equal the official code's, counted. GFLOPs at 1 class by :meth:`VMUNet.flops`: 2 x MACs of the
convolutions and linear layers plus the scans and their x_proj / dt_proj products, see there; the convolutions
and linear layers alone give 8.14 and 14.99 GFLOPs. The paper's 4.11 "GFLOPs" for VM-UNet (from memory,
unverified) matches the convolutions' and linear layers' MACs, 4.07 G, rather than a FLOP count.)

State-dict names are the official ``VMUNet``'s (everything under ``vmunet.``), so its checkpoints load with
``strict=True``; :meth:`VMUNet.checkpoint_filter` also accepts a bare ``VSSM`` state_dict (without the prefix).
Not included: loading the ImageNet VMamba encoder weights the official ``load_from`` copies into both encoder
and decoder (a non-strict, renaming load of a VMamba classification checkpoint); the official ``ape`` (absolute
position embedding, hard-wired off) and gradient checkpointing (``use_checkpoint``, off in the configs).

Where the official code is silent or fails: maps whose sides are not multiples of 32 make the official
decoder's skip sums fail (after printing a warning in PatchMerging2D); here they raise ValueError up front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medkernels._typing import Backend, Device, DType
from medkernels.nn.ss2d import SS2D, VSSBlock

from ._backend import KernelBackend
from ._flops import forward_flops
from ._registry import register_model

__all__ = [
    "VMUNet",
    "VSSM",
    "PatchEmbed2D",
    "PatchMerging2D",
    "PatchExpand2D",
    "Final_PatchExpand2D",
    "VSSLayer",
    "VSSLayer_up",
    "vm_unet",
]


class PatchEmbed2D(nn.Module):
    """Conv2d(in -> C, kernel = stride = patch) -> channels-last -> LayerNorm (official ``PatchEmbed2D``).

    Shapes: (B, in, H, W) -> (B, H / patch, W / patch, C).
    """

    def __init__(
        self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, device: Device = None, dtype: DType = None
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, **fk)
        self.norm = nn.LayerNorm(embed_dim, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """2x2 neighbours concatenated ((0,0), (1,0), (0,1), (1,1)) -> LayerNorm(4C) -> Linear(4C -> 2C, no bias).

    Shapes: (B, H, W, C) -> (B, H / 2, W / 2, 2C), H and W even.
    """

    def __init__(self, dim: int, device: Device = None, dtype: DType = None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False, **fk)
        self.norm = nn.LayerNorm(4 * dim, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        # (h, i, w, j) -> (h, w, j, i): neighbour (i, j) at index 2 j + i, the official x0, x1, x2, x3
        x = x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).reshape(B, H // 2, W // 2, 4 * C)
        return self.reduction(self.norm(x))


class PatchExpand2D(nn.Module):
    """Linear(2 dim -> 4 dim, no bias), each token's channels split into ``dim_scale x dim_scale`` sub-pixels of
    ``dim`` channels ("b h w (p1 p2 c) -> b (h p1) (w p2) c"), LayerNorm(dim) (official ``PatchExpand2D``:
    ``dim`` is the OUTPUT width, the input has 2 dim).

    Shapes: (B, H, W, 2 dim) -> (B, 2H, 2W, dim).
    """

    def __init__(self, dim: int, dim_scale: int = 2, device: Device = None, dtype: DType = None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.dim = dim * 2
        self.dim_scale = dim_scale
        self.expand = nn.Linear(self.dim, dim_scale * self.dim, bias=False, **fk)
        self.norm = nn.LayerNorm(self.dim // dim_scale, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_pixel_shuffle(self.expand(x), self.dim_scale, x.shape[-1] // self.dim_scale))


class Final_PatchExpand2D(nn.Module):  # the official name
    """Linear(dim -> dim_scale * dim, no bias), ``dim_scale x dim_scale`` sub-pixels of dim / dim_scale channels,
    LayerNorm(dim / dim_scale) (official ``Final_PatchExpand2D``).

    Shapes: (B, H, W, dim) -> (B, 4H, 4W, dim / 4) at dim_scale 4.
    """

    def __init__(self, dim: int, dim_scale: int = 4, device: Device = None, dtype: DType = None) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.dim = dim
        self.dim_scale = dim_scale
        self.expand = nn.Linear(dim, dim_scale * dim, bias=False, **fk)
        self.norm = nn.LayerNorm(dim // dim_scale, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_pixel_shuffle(self.expand(x), self.dim_scale, x.shape[-1] // self.dim_scale))


def _pixel_shuffle(x: torch.Tensor, p: int, c: int) -> torch.Tensor:
    """einops 'b h w (p1 p2 c) -> b (h p1) (w p2) c' with p1 = p2 = p."""
    B, H, W, _ = x.shape
    return x.view(B, H, W, p, p, c).permute(0, 1, 3, 2, 4, 5).reshape(B, H * p, W * p, c)


def _blocks(dim, depth, drop_path, d_state, attn_drop, backend, fk) -> nn.ModuleList:
    return nn.ModuleList(
        VSSBlock(dim, drop_path[i], 1e-5, attn_drop_rate=attn_drop, d_state=d_state, backend=backend, **fk)
        for i in range(depth)
    )


class VSSLayer(nn.Module):
    """An encoder stage: ``depth`` VSS blocks, then an optional PatchMerging2D (official ``VSSLayer``).

    Shapes: (B, H, W, C) -> (B, H, W, C), or (B, H / 2, W / 2, 2C) with ``downsample``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: Sequence[float],
        downsample: bool,
        d_state: int = 16,
        attn_drop: float = 0.0,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.dim = dim
        self.blocks = _blocks(dim, depth, drop_path, d_state, attn_drop, backend, fk)
        self.downsample = PatchMerging2D(dim, **fk) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class VSSLayer_up(nn.Module):  # the official name
    """A decoder stage: an optional PatchExpand2D, then ``depth`` VSS blocks (official ``VSSLayer_up``).

    Shapes: (B, H, W, C) -> (B, H, W, C), or (B, H, W, 2C) -> (B, 2H, 2W, C) with ``upsample``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        drop_path: Sequence[float],
        upsample: bool,
        d_state: int = 16,
        attn_drop: float = 0.0,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.dim = dim
        self.upsample = PatchExpand2D(dim, **fk) if upsample else None
        self.blocks = _blocks(dim, depth, drop_path, d_state, attn_drop, backend, fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = self.upsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class VSSM(nn.Module):
    """VM-UNet's encoder-decoder (official ``VSSM``; see the module docstring).

    Args:
        in_chans: input channels (3).
        num_classes: output channels of ``final_conv``.
        depths: VSS blocks per encoder stage.
        depths_decoder: VSS blocks per decoder stage (768, 384, 192, 96 channels).
        dims: encoder widths (the decoder uses them reversed).
        d_state: SS2D state size.
        drop_rate: dropout after the patch embedding (``pos_drop``).
        attn_drop_rate: SS2D's dropout.
        drop_path_rate: stochastic depth, ramped linearly over the blocks.
        patch_size: of the patch embedding.
        backend, device, dtype: as :class:`medkernels.nn.SS2D`.

    Shapes:
        forward(x (B, in_chans, H, W)) -> (B, num_classes, H, W) logits.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (2, 2, 9, 2),
        depths_decoder: Sequence[int] = (2, 9, 2, 2),
        dims: Sequence[int] = (96, 192, 384, 768),
        d_state: int = 16,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        patch_size: int = 4,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        depths, depths_decoder, dims = tuple(depths), tuple(depths_decoder), tuple(dims)
        n = len(depths)
        if n < 1 or len(depths_decoder) != n or len(dims) != n:
            raise ValueError(
                f"VSSM: depths, depths_decoder and dims need the same (>= 1) number of stages, got {depths}, "
                f"{depths_decoder}, {dims}"
            )
        if any(not isinstance(d, int) or d < 0 for d in depths + depths_decoder):
            raise ValueError(f"VSSM: depths must be ints >= 0, got {depths} and {depths_decoder}")
        if any(dims[i + 1] != 2 * dims[i] for i in range(n - 1)) or dims[0] % 4 != 0:
            raise ValueError(f"VSSM: dims must double per stage from a multiple of 4, got {dims}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"VSSM: num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"VSSM: drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.num_classes, self.num_layers, self.dims = num_classes, n, dims
        self.depths, self.depths_decoder, self.patch_size = depths, depths_decoder, patch_size
        self.embed_dim, self.num_features = dims[0], dims[-1]
        dims_decoder = dims[::-1]
        self.patch_embed = PatchEmbed2D(patch_size, in_chans, dims[0], **fk)
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        dpr_decoder = torch.linspace(0, drop_path_rate, sum(depths_decoder)).tolist()[::-1]
        self.layers = nn.ModuleList(
            VSSLayer(
                dims[i],
                depths[i],
                dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                i < n - 1,
                d_state,
                attn_drop_rate,
                backend,
                **fk,
            )
            for i in range(n)
        )
        self.layers_up = nn.ModuleList(
            VSSLayer_up(
                dims_decoder[i],
                depths_decoder[i],
                dpr_decoder[sum(depths_decoder[:i]) : sum(depths_decoder[: i + 1])],
                i != 0,
                d_state,
                attn_drop_rate,
                backend,
                **fk,
            )
            for i in range(n)
        )
        self.final_up = Final_PatchExpand2D(dims_decoder[-1], dim_scale=4, **fk)
        self.final_conv = nn.Conv2d(dims_decoder[-1] // 4, num_classes, 1, **fk)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in_chans, H, W) -> logits (B, num_classes, H, W)."""
        x = self.pos_drop(self.patch_embed(x))
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        for i, layer_up in enumerate(self.layers_up):
            x = layer_up(x if i == 0 else x + skips[-i])
        return self.final_conv(self.final_up(x).permute(0, 3, 1, 2))


class VMUNet(KernelBackend, nn.Module):
    """VM-UNet (official ``VMUNet``, whose single child ``vmunet`` is the :class:`VSSM`).

    Args:
        num_classes: output channels; 1 returns a sigmoid (probabilities), more return logits.
        input_channels: channels the patch embedding takes (a 1-channel input is repeated to 3 first).
        depths, depths_decoder: VSS blocks per encoder / decoder stage (class defaults (2,2,9,2) / (2,9,2,2) as
            the official class; the registered ``vm_unet`` uses the training configs' (2,2,2,2) / (2,2,2,1)).
        drop_path_rate: stochastic depth (0.2).
        backend: scan backend of every SS2D (None automatic, "cpu", "triton", "reference"); settable later
            through :attr:`backend`.
        device, dtype: of the parameters.
        **kwargs: :class:`VSSM`'s other arguments (``dims``, ``d_state``, ``drop_rate``, ``attn_drop_rate``).

    Shapes:
        forward(x (B, input_channels or 1, H, W)) -> (B, num_classes, H, W); H and W multiples of 32.
    """

    _kernel_types = (SS2D,)  # their backend is the model's (KernelBackend)

    def __init__(
        self,
        num_classes: int = 1,
        input_channels: int = 3,
        depths: Sequence[int] = (2, 2, 9, 2),
        depths_decoder: Sequence[int] = (2, 9, 2, 2),
        drop_path_rate: float = 0.2,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
        **kwargs,
    ) -> None:
        super().__init__()
        self.num_classes, self.input_channels = num_classes, input_channels
        self.vmunet = VSSM(
            in_chans=input_channels,
            num_classes=num_classes,
            depths=depths,
            depths_decoder=depths_decoder,
            drop_path_rate=drop_path_rate,
            backend=backend,
            device=device,
            dtype=dtype,
            **kwargs,
        )

    def extra_repr(self) -> str:
        v = self.vmunet
        return f"num_classes={self.num_classes}, depths={v.depths}, depths_decoder={v.depths_decoder}, dims={v.dims}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> (B, num_classes, H, W): sigmoid probabilities at 1 class, else logits."""
        if x.dim() != 4:
            raise ValueError(f"VMUNet: x must have shape (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[1] != self.input_channels:
            raise ValueError(
                f"VMUNet: x must have {self.input_channels} channels (or 1, repeated to 3), got {x.shape[1]}"
            )
        unit = self.vmunet.patch_size * 2 ** (self.vmunet.num_layers - 1)
        if x.shape[2] % unit or x.shape[3] % unit or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"VMUNet: H and W must be positive multiples of {unit}, got {tuple(x.shape[2:])}")
        logits = self.vmunet(x)
        return torch.sigmoid(logits) if self.num_classes == 1 else logits

    def num_params(self, trainable_only: bool = False) -> int:
        """Number of parameters (as the official count: every ``nn.Parameter``).

        Args:
            trainable_only: count only those requiring gradients.
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops(self, img_size: int | Sequence[int] = 256, batch_size: int = 1, include_scan: bool = True) -> int:
        """Floating-point operations of one forward pass.

        Rule: 2 x the multiply-accumulates of every convolution and linear layer (the patch embedding, in_proj,
        the depthwise conv, out_proj, the patch merging / expanding projections, final_conv), plus, with
        ``include_scan``, 2 x the MACs of each SS2D's four scans: per scan, token and inner channel, its x_proj
        (R + 2N) and dt_proj (R) products and the recurrence's 4N + 1 (dt A, dt u B, the state update and the
        C readout per state, and the D skip), with R the dt rank and N the state size. Norms, activations,
        the softplus and exp, the sum of the four scans and other elementwise products are not counted.
        Counted on the meta device (no compute).

        Args:
            img_size: ``H`` or ``(H, W)`` of the input (multiples of 32).
            batch_size: images.
            include_scan: count the scans and their x_proj / dt_proj (not convolutions or linear layers).

        Returns:
            FLOPs (e.g. ``flops() / 1e9`` GFLOPs).
        """
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)

        def ss2d(m, inputs, out):
            B, H, W, _ = inputs[0].shape
            macs = B * H * W * m.d_model * 2 * m.d_inner  # in_proj (SS2D runs it as two GEMMs, not the module)
            if include_scan:
                t = B * H * W * m.num_scans
                proj = t * m.d_inner * (m.dt_rank + 2 * m.d_state) + t * m.dt_rank * m.d_inner
                macs += proj + t * m.d_inner * (4 * m.d_state + 1)
            return 2 * macs

        x = torch.empty(batch_size, self.input_channels, h, w, device="meta")
        return forward_flops(self, [x], {SS2D: ss2d})

    def checkpoint_filter(self, state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Maps an official VM-UNet state_dict onto this model (used by :func:`medkernels.models.load_checkpoint`):
        a ``VMUNet`` one loads as is; a bare ``VSSM`` one (names without ``vmunet.``) gets the prefix, with a note.
        """
        if any(k.startswith("vmunet.") for k in state_dict):
            return dict(state_dict), []
        return {f"vmunet.{k}": v for k, v in state_dict.items()}, [
            "added the 'vmunet.' prefix (a bare VSSM state_dict)"
        ]


@register_model
def vm_unet(
    num_classes: int = 1,
    input_channels: int = 3,
    depths: Sequence[int] = (2, 2, 2, 2),
    depths_decoder: Sequence[int] = (2, 2, 2, 1),
    drop_path_rate: float = 0.2,
    **kwargs,
) -> VMUNet:
    """VM-UNet as trained in the paper (the official ISIC and Synapse configs): depths (2,2,2,2), decoder
    (2,2,2,1), drop path 0.2; 27,427,561 parameters at 1 class (27,427,761 at 9).

    Args:
        num_classes: output channels (1: sigmoid output, ISIC; 9: logits, Synapse).
        input_channels: input channels (a 1-channel input is repeated to 3).
        depths, depths_decoder, drop_path_rate: as :class:`VMUNet`.
        **kwargs: :class:`VMUNet`'s other arguments (``backend``, ``dims``, ``d_state``, ``device``, ...).
    """
    return VMUNet(num_classes, input_channels, depths, depths_decoder, drop_path_rate, **kwargs)
