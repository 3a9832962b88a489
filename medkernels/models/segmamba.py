"""SegMamba: a 3D U-Net whose encoder runs tri-orientated Mamba layers, on :mod:`medkernels.nn`.

Xing, Ye, Yang, Liu, Zhu, "SegMamba: Long-range Sequential Modeling Mamba For 3D Medical Image Segmentation",
MICCAI 2024 (arXiv 2401.13560). The architecture is the official ``SegMamba`` (github.com/ge-xing/SegMamba,
``model_segmamba/segmamba.py``, commit cff3597) with its state-dict names, so its checkpoints load with
``strict=True``:

* ``vit`` (``MambaEncoder``): a stem Conv3d(in, 48, 7, stride 2, padding 3), then per stage i = 0..3 (after
  stage 0: InstanceNorm3d + Conv3d(kernel 2, stride 2)) a gated spatial convolution block (``GSC``: two
  3x3x3 conv/InstanceNorm/ReLU branches against a 1x1x1 one, summed, 1x1x1 conv/InstanceNorm/ReLU, plus the
  input), ``depths[i]`` :class:`medkernels.nn.TriOrientedMambaLayer` (``num_slices`` 64, 32, 16, 8), and an
  output InstanceNorm3d + ``MlpChannel`` (1x1x1 conv to 2C, GELU, 1x1x1 conv back);
* MONAI's UNETR decoder: ``encoder1``-``encoder5`` (``UnetrBasicBlock``, residual, at the input and the four
  encoder outputs), ``decoder5``-``decoder2`` (``UnetrUpBlock``: 2x2x2 transposed conv, concatenation with the
  skip, residual block), ``decoder1`` and the 1x1x1 ``out`` (``UnetOutBlock``).

MONAI is not a dependency: the few MONAI blocks are restated here with MONAI's module and parameter names
(``encoder1.layer.conv1.conv.weight``, ``decoder5.transp_conv.conv.weight``, ``out.conv.conv.weight``, ...)
and semantics (bias-free convolutions, InstanceNorm3d without affine parameters, LeakyReLU 0.01, the 1x1x1
projection of the residual when the channels change); tests/test_model_segmamba.py checks them against
MONAI's own blocks where MONAI is installed.

Differences from the official code:

* ``out`` takes ``feat_size[0]`` input channels (the official hard-codes 48, the default ``feat_size[0]``:
  any other ``feat_size[0]`` fails there).
* ``num_slices`` (the official ``num_slices_list``, hard-coded to (64, 32, 16, 8)) is an argument.
* Only ``spatial_dims=3``, ``norm_name="instance"``; ``drop_path_rate``, ``layer_scale_init_value`` and
  ``conv_block`` are accepted and unused, as in the official code.
* Inputs: each spatial size a multiple of 16, and the tokens of stage i ((size / 2^(i+1)) voxels) a multiple
  of ``num_slices[i]`` (the official network fails otherwise too); checked with a ValueError.
* Weights start from PyTorch's default initialisation (and the Mamba's own), as the official code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from medkernels._typing import Backend, Device, DType
from medkernels.nn import TriOrientedMamba, TriOrientedMambaLayer

from ._backend import KernelBackend
from ._registry import register_model

__all__ = ["SegMamba", "segmamba"]


# --- MONAI's blocks, restated with MONAI's names (monai.networks.blocks.dynunet_block / unetr_block) ---------------


class _Convolution(nn.Module):
    """MONAI's ``Convolution`` with ``conv_only``-style content: one (transposed) Conv3d held as ``conv``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = False, transposed=False, **fk):
        super().__init__()
        if transposed:  # MONAI: padding (k - s + 1) // 2 = 0 and output_padding 0 for k = s = 2
            self.conv = nn.ConvTranspose3d(cin, cout, kernel, stride, bias=bias, **fk)
        else:
            self.conv = nn.Conv3d(cin, cout, kernel, stride, padding=(kernel - stride + 1) // 2, bias=bias, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UnetResBlock(nn.Module):
    """MONAI's ``UnetResBlock`` (instance norm, LeakyReLU 0.01): conv-norm-act-conv-norm plus the input (through
    a 1x1x1 conv and norm when the channels change), then the activation. [B, Cin, D, H, W] -> [B, Cout, ...]."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, **fk) -> None:
        super().__init__()
        self.conv1 = _Convolution(cin, cout, kernel, **fk)
        self.conv2 = _Convolution(cout, cout, kernel, **fk)
        self.lrelu = nn.LeakyReLU(0.01)
        self.norm1 = nn.InstanceNorm3d(cout)
        self.norm2 = nn.InstanceNorm3d(cout)
        self.downsample = cin != cout
        if self.downsample:
            self.conv3 = _Convolution(cin, cout, 1, **fk)
            self.norm3 = nn.InstanceNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.lrelu(self.norm1(self.conv1(x)))))
        res = self.norm3(self.conv3(x)) if self.downsample else x
        return self.lrelu(out + res)


class UnetBasicBlock(nn.Module):
    """MONAI's ``UnetBasicBlock``: two conv-norm-LeakyReLU. [B, Cin, D, H, W] -> [B, Cout, D, H, W]."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, **fk) -> None:
        super().__init__()
        self.conv1 = _Convolution(cin, cout, kernel, **fk)
        self.conv2 = _Convolution(cout, cout, kernel, **fk)
        self.lrelu = nn.LeakyReLU(0.01)
        self.norm1 = nn.InstanceNorm3d(cout)
        self.norm2 = nn.InstanceNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lrelu(self.norm2(self.conv2(self.lrelu(self.norm1(self.conv1(x))))))


def _block(cin: int, cout: int, res_block: bool, **fk) -> nn.Module:
    return UnetResBlock(cin, cout, **fk) if res_block else UnetBasicBlock(cin, cout, **fk)


class UnetrBasicBlock(nn.Module):
    """MONAI's ``UnetrBasicBlock`` (stride 1, kernel 3): the block held as ``layer``."""

    def __init__(self, cin: int, cout: int, res_block: bool = True, **fk) -> None:
        super().__init__()
        self.layer = _block(cin, cout, res_block, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class UnetrUpBlock(nn.Module):
    """MONAI's ``UnetrUpBlock`` (upsample kernel 2, kernel 3): ``transp_conv`` (2x2x2, stride 2, no bias), the
    skip concatenated after the upsampled map, ``conv_block`` from 2 Cout to Cout."""

    def __init__(self, cin: int, cout: int, res_block: bool = True, **fk) -> None:
        super().__init__()
        self.transp_conv = _Convolution(cin, cout, 2, 2, transposed=True, **fk)
        self.conv_block = _block(2 * cout, cout, res_block, **fk)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))


class UnetOutBlock(nn.Module):
    """MONAI's ``UnetOutBlock``: a 1x1x1 Conv3d with bias, held as ``conv.conv``."""

    def __init__(self, cin: int, cout: int, **fk) -> None:
        super().__init__()
        self.conv = _Convolution(cin, cout, 1, bias=True, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


# --- the encoder ------------------------------------------------------------------------------------------------


class GSC(nn.Module):
    """SegMamba's gated spatial convolution block: [B, C, D, H, W] -> same shape (names as the official)."""

    def __init__(self, channels: int, **fk) -> None:
        super().__init__()
        C = channels
        self.proj, self.norm, self.nonliner = nn.Conv3d(C, C, 3, 1, 1, **fk), nn.InstanceNorm3d(C), nn.ReLU()
        self.proj2, self.norm2, self.nonliner2 = nn.Conv3d(C, C, 3, 1, 1, **fk), nn.InstanceNorm3d(C), nn.ReLU()
        self.proj3, self.norm3, self.nonliner3 = nn.Conv3d(C, C, 1, 1, 0, **fk), nn.InstanceNorm3d(C), nn.ReLU()
        self.proj4, self.norm4, self.nonliner4 = nn.Conv3d(C, C, 1, 1, 0, **fk), nn.InstanceNorm3d(C), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.nonliner(self.norm(self.proj(x)))
        x1 = self.nonliner2(self.norm2(self.proj2(x1)))
        x2 = self.nonliner3(self.norm3(self.proj3(x)))
        return self.nonliner4(self.norm4(self.proj4(x1 + x2))) + x


class MlpChannel(nn.Module):
    """1x1x1 conv to ``mlp_dim``, GELU, 1x1x1 conv back: [B, C, D, H, W] -> same shape."""

    def __init__(self, hidden_size: int, mlp_dim: int, **fk) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(hidden_size, mlp_dim, 1, **fk)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(mlp_dim, hidden_size, 1, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MambaEncoder(nn.Module):
    """The official ``MambaEncoder``: [B, Cin, D, H, W] -> four maps [B, dims[i], D / 2^(i+1), ...]."""

    def __init__(
        self,
        in_chans: int,
        depths: Sequence[int],
        dims: Sequence[int],
        num_slices: Sequence[int],
        backend: Backend = None,
        **fk,
    ) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv3d(in_chans, dims[0], 7, 2, 3, **fk))])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(nn.InstanceNorm3d(dims[i]), nn.Conv3d(dims[i], dims[i + 1], 2, 2, **fk))
            )
        self.stages = nn.ModuleList()
        self.gscs = nn.ModuleList()
        for i in range(4):  # the official creation order: the GSC, then the stage's layers
            gsc = GSC(dims[i], **fk)
            layers = (
                TriOrientedMambaLayer(dims[i], num_slices=num_slices[i], backend=backend, **fk)
                for _ in range(depths[i])
            )
            self.stages.append(nn.Sequential(*layers))
            self.gscs.append(gsc)
        self.out_indices = (0, 1, 2, 3)
        self.mlps = nn.ModuleList()
        for i in range(4):
            self.add_module(f"norm{i}", nn.InstanceNorm3d(dims[i]))
            self.mlps.append(MlpChannel(dims[i], 2 * dims[i], **fk))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i in range(4):
            x = self.stages[i](self.gscs[i](self.downsample_layers[i](x)))
            outs.append(self.mlps[i](getattr(self, f"norm{i}")(x)))
        return tuple(outs)


# --- the network ------------------------------------------------------------------------------------------------


def _ints(name: str, value, n: int) -> tuple[int, ...]:
    if (
        isinstance(value, Sequence)
        and len(value) == n
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return tuple(value)
    raise ValueError(f"SegMamba: {name} must be {n} positive ints, got {value!r}")


class SegMamba(KernelBackend, nn.Module):
    """SegMamba (the official ``SegMamba`` class, its argument names and defaults).

    Args:
        in_chans: input channels (1; 4 for BraTS).
        out_chans: output channels (13; 4 for BraTS).
        depths: TriOrientedMambaLayers per encoder stage (2, 2, 2, 2).
        feat_size: channels of the four encoder stages (48, 96, 192, 384).
        drop_path_rate, layer_scale_init_value: accepted, unused (as the official).
        hidden_size: channels of the bottleneck block ``encoder5`` (768).
        norm_name: "instance" (the only one supported: InstanceNorm3d, no affine parameters).
        conv_block: accepted, unused (as the official).
        res_block: residual MONAI blocks (True, the official default) or plain ones.
        spatial_dims: 3 (the only one supported).
        num_slices: ``nslices`` of the Mamba layers per stage (the official hard-coded 64, 32, 16, 8).
        backend: medkernels backend of the Mamba layers' ops (None automatic).
        device, dtype: of the parameters.

    Shapes:
        forward(x [B, in_chans, D, H, W]) -> logits [B, out_chans, D, H, W]; D, H, W multiples of 16 and
        the voxels of stage i (D H W / 8^(i+1)) multiples of ``num_slices[i]``.
    """

    _kernel_types = (TriOrientedMamba,)  # their backend is the model's (KernelBackend)

    def __init__(
        self,
        in_chans: int = 1,
        out_chans: int = 13,
        depths: Sequence[int] = (2, 2, 2, 2),
        feat_size: Sequence[int] = (48, 96, 192, 384),
        drop_path_rate: float = 0,
        layer_scale_init_value: float = 1e-6,
        hidden_size: int = 768,
        norm_name: str = "instance",
        conv_block: bool = True,
        res_block: bool = True,
        spatial_dims: int = 3,
        num_slices: Sequence[int] = (64, 32, 16, 8),
        *,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_chans", in_chans), ("out_chans", out_chans), ("hidden_size", hidden_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"SegMamba: {name} must be a positive int, got {v!r}")
        depths = _ints("depths", depths, 4)
        feat_size = _ints("feat_size", feat_size, 4)
        num_slices = _ints("num_slices", num_slices, 4)
        if norm_name != "instance":
            raise ValueError(f"SegMamba: norm_name must be 'instance' (the official setting), got {norm_name!r}")
        if spatial_dims != 3:
            raise ValueError(f"SegMamba: spatial_dims must be 3, got {spatial_dims!r}")
        fk = {"device": device, "dtype": dtype}
        self.hidden_size, self.in_chans, self.out_chans = hidden_size, in_chans, out_chans
        self.depths, self.feat_size, self.num_slices = depths, feat_size, num_slices
        self.drop_path_rate, self.layer_scale_init_value = drop_path_rate, layer_scale_init_value
        self.res_block, self.spatial_dims = bool(res_block), spatial_dims
        f, rb = feat_size, self.res_block
        self.vit = MambaEncoder(in_chans, depths, f, num_slices, backend=backend, **fk)
        self.encoder1 = UnetrBasicBlock(in_chans, f[0], rb, **fk)
        self.encoder2 = UnetrBasicBlock(f[0], f[1], rb, **fk)
        self.encoder3 = UnetrBasicBlock(f[1], f[2], rb, **fk)
        self.encoder4 = UnetrBasicBlock(f[2], f[3], rb, **fk)
        self.encoder5 = UnetrBasicBlock(f[3], hidden_size, rb, **fk)
        self.decoder5 = UnetrUpBlock(hidden_size, f[3], rb, **fk)
        self.decoder4 = UnetrUpBlock(f[3], f[2], rb, **fk)
        self.decoder3 = UnetrUpBlock(f[2], f[1], rb, **fk)
        self.decoder2 = UnetrUpBlock(f[1], f[0], rb, **fk)
        self.decoder1 = UnetrBasicBlock(f[0], f[0], rb, **fk)
        self.out = UnetOutBlock(f[0], out_chans, **fk)

    def extra_repr(self) -> str:
        return (
            f"in_chans={self.in_chans}, out_chans={self.out_chans}, depths={self.depths}, "
            f"feat_size={self.feat_size}, hidden_size={self.hidden_size}, num_slices={self.num_slices}"
        )

    def check_input_size(self, size: Sequence[int]) -> None:
        """Raises ValueError unless ``size = (D, H, W)`` runs: multiples of 16, stage i's voxels a multiple of
        ``num_slices[i]``."""
        size = [int(s) for s in size]
        if len(size) != 3 or min(size) < 16 or max(s % 16 for s in size) > 0:
            raise ValueError(f"SegMamba: the spatial size must be 3 multiples of 16, got {tuple(size)}")
        for i, n in enumerate(self.num_slices):
            voxels = math.prod([s >> (i + 1) for s in size])
            if voxels % n:
                raise ValueError(
                    f"SegMamba: stage {i + 1} has {voxels} voxels for a {tuple(size)} input, not a multiple of "
                    f"num_slices[{i}]={n}"
                )

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        """x_in ``[B, in_chans, D, H, W]`` -> logits ``[B, out_chans, D, H, W]``."""
        if x_in.dim() != 5 or x_in.shape[1] != self.in_chans:
            raise ValueError(f"SegMamba: x must be [B, {self.in_chans}, D, H, W], got {tuple(x_in.shape)}")
        self.check_input_size(x_in.shape[2:])
        outs = self.vit(x_in)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(outs[0])
        enc3 = self.encoder3(outs[1])
        enc4 = self.encoder4(outs[2])
        enc_hidden = self.encoder5(outs[3])
        dec3 = self.decoder5(enc_hidden, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return self.out(self.decoder1(dec0))

    def num_params(self, trainable_only: bool = False) -> int:
        """The number of parameters (67,363,213 with the defaults; 67,416,196 with 4 in and 4 out channels).

        Args:
            trainable_only: count only those requiring gradients.
        """
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def flops(self, input_size: Sequence[int] = (1, 4, 128, 128, 128)) -> int:
        """Floating-point operations of one forward at ``input_size = (B, in_chans, D, H, W)``.

        Rule (the paper gives no count): 2 x the multiply-accumulates of every convolution (Conv3d, the 2x2x2
        ConvTranspose3d, the Mamba's depthwise Conv1d) and linear layer (in_proj, x_proj, dt_proj, out_proj), plus
        each direction's selective scan as mamba_ssm's ``flops_selective_scan_ref`` counts it (9 L d_inner d_state,
        and L d_inner for the D skip); norms, activations, the gate, additions and concatenations are not counted.
        The count is of the architecture, not of this implementation.

        Args:
            input_size: ``(B, in_chans, D, H, W)``; D, H, W multiples of 16.

        Returns:
            FLOPs (e.g. ``flops() / 1e9`` GFLOPs).

        Raises:
            ValueError: a malformed ``input_size``.
        """
        if len(input_size) != 5 or input_size[1] != self.in_chans:
            raise ValueError(f"SegMamba.flops: input_size must be (B, {self.in_chans}, D, H, W), got {input_size}")
        B, cin, *size = input_size
        self.check_input_size(size)
        f, hid = self.feat_size, self.hidden_size
        vox = [B * math.prod(size)] + [B * math.prod(s >> (i + 1) for s in size) for i in range(4)]

        def res(n: int, ci: int, co: int) -> int:  # UnetResBlock / UnetBasicBlock MACs at n voxels
            return n * (27 * ci * co + 27 * co * co + (ci * co if self.res_block and ci != co else 0))

        macs, extra = vox[1] * f[0] * cin * 343, 0  # stem
        for i in range(4):
            n, C = vox[i + 1], f[i]
            if i:
                macs += n * C * f[i - 1] * 8  # downsampling Conv3d(2, 2)
            macs += n * C * C * (27 + 27 + 1 + 1) + n * C * 2 * C * 2  # GSC, MlpChannel
            m = self.vit.stages[i][0].mamba
            E, N, R, W = m.d_inner, m.d_state, m.dt_rank, m.d_conv
            per_dir = n * E * (W + R + 2 * N) + n * R * E  # conv1d, x_proj, dt_proj
            macs += self.depths[i] * (n * C * 2 * E + 3 * per_dir + n * E * C)  # + in_proj, out_proj
            extra += self.depths[i] * 3 * (9 * n * E * N + n * E)
        macs += res(vox[0], cin, f[0]) + sum(res(vox[i + 1], f[i], f[i + 1]) for i in range(3))
        macs += res(vox[4], f[3], hid)  # encoder5
        ups = [(hid, f[3]), (f[3], f[2]), (f[2], f[1]), (f[1], f[0])]
        for j, (ci, co) in enumerate(ups):  # decoder5..2: transposed conv at the finer grid, then the block
            n = vox[3 - j]
            macs += n * ci * co + res(n, 2 * co, co)
        macs += res(vox[0], f[0], f[0]) + vox[0] * f[0] * self.out_chans
        return 2 * macs + extra


@register_model
def segmamba(
    in_chans: int = 1,
    out_chans: int = 13,
    depths: Sequence[int] = (2, 2, 2, 2),
    feat_size: Sequence[int] = (48, 96, 192, 384),
    hidden_size: int = 768,
    **kwargs,
) -> SegMamba:
    """SegMamba as the official class builds it: 67,363,213 parameters with the defaults, 67,416,196 with
    ``in_chans=4, out_chans=4`` (the BraTS 2023 setting). Keyword arguments as :class:`SegMamba`."""
    return SegMamba(in_chans, out_chans, depths, feat_size, hidden_size=hidden_size, **kwargs)
