"""The Point-SSM blocks of PointMamba2: the vanilla block (one Mamba over a sequence) and the group block.

Zhang, Yang, Li, "PointMamba2" (hierarchical point-cloud SSM), MICCAI 2025, arXiv 2504.13015;
official code github.com/wlsdzyzl/flemme, class ``PointScanMambaNonFFNBlock`` in
``flemme/block/pmamba.py`` (building block ``pmamba_non_ffn``, "the original experimental setting in
MICCAI submission", commit cde13ac), its orderings built by ``PointMamba2Encoder.scan`` in
``flemme/encoder/point/pointmamba2.py``. A Mamba-1 block whose selective scan runs along K = 8
orderings of the points (x-, y-, z-coordinate order, inside-out, and their reverses), each with its
own x_proj / dt_proj / A / D, the K outputs mapped back to the original point order and summed (no
averaging):

    x, z = in_proj(h).chunk(2)                       (B, L, C) -> 2 x (B, L, expand * C)
    x = LeakyReLU(causal depthwise conv1d(x))        in the given (FPS) point order, before any sorting
    y = sum_k scan_k(x)                              medkernels.ops.multi_order_selective_scan
    f = out_proj(y * LeakyReLU(z))
    out = h + LeakyReLU(GroupNorm(f))                post_normalization=False (cde13ac, the paper)
    out = LeakyReLU(GroupNorm(h + f))                post_normalization=True (flemme >= a3df3e5)

The MedPointS configs (``resources/pcd/medpoints/*/train_pointmamba2knn_*.yaml``) set ``activation:
lrelu`` (nn.LeakyReLU(), slope 0.01, used for the conv, the gate and after the norm), ``normalization:
group`` with the encoder's 8 groups, ``scan_strategies: [x_order, y_order, z_order, center_dist]`` and
``flip_scan: True``; the encoder defaults give d_state 64, d_conv 4, expand 2, dt_rank ceil(C / 16),
bias False, conv_bias True, no dropout. The official scans run in float32 (mamba_ssm's
``selective_scan_fn`` with delta_softplus) and their sum is float32; here the sum comes back in the
dtype of the inputs (the same for float32 models).

Orderings (scanner k of the official ``sorted_index_list``, the order of :data:`SCAN_ORDERS`):
``torch.argsort`` of the x, y, z coordinate and of the Euclidean distance to the mean of the level's
(FPS-sampled) points, ascending; then ``torch.flip`` of each of those four index rows (so a reverse is
the same argsort read backwards, ties included). The official argsort is not stable, so the order of
tied keys is unspecified there; here it is stable (tied points keep their FPS order). One set of
orderings per level is shared by the level's blocks (pass ``orders``).

Parameter names and shapes are the official block's, so its state_dict loads with ``strict=True``
(inside the encoder the keys sit under ``lrm.<level>.building_blocks.<i>.``): ``in_proj.weight``
(2 d_inner, C), ``conv.weight`` (d_inner, 1, d_conv), ``conv.bias`` (d_inner), ``x_proj_weight``
(K, dt_rank + 2 d_state, d_inner), ``dt_projs_weight`` (K, d_inner, dt_rank), ``dt_projs_bias``
(K, d_inner), ``A_logs`` (K * d_inner, d_state), ``Ds`` (K * d_inner), ``out_proj.weight``
(C, d_inner), ``norm.weight`` / ``norm.bias`` (C). Not included: dropout (0 in the configs), time /
condition injection (absent without time or condition channels) and the ``dense`` Linear the official
block adds only when C_out != C (C_out = C here, as in the encoder).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medkernels import ops
from medkernels._typing import Device, DType

from .mamba import Mamba

__all__ = ["PointSSMBlock", "PointSSMGroupBlock", "point_scan_orders", "SCAN_ORDERS"]

SCAN_ORDERS = ("x", "y", "z", "center", "x_reversed", "y_reversed", "z_reversed", "center_reversed")


def point_scan_orders(xyz: torch.Tensor) -> torch.Tensor:
    """The 8 scan orderings of PointMamba2's group Point-SSM, in the order of :data:`SCAN_ORDERS`.

    The official ``x_order``, ``y_order``, ``z_order``, ``center_dist`` scanners followed by the flip
    of each (``flip_scan``), as ``PointMamba2Encoder.scan`` builds them; ties keep their input order
    (the official argsort is unstable, so tied keys may be ordered differently there).

    Args:
        xyz: (B, L, 3) point coordinates.

    Returns:
        (B, 8, L) int64, row k lists the point indices in scan k's visiting order: ascending argsort
        by x, y, z and by Euclidean distance to the mean of the L points (inside-out), then each of
        those four rows flipped.
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"point_scan_orders: xyz must have shape (B, L, 3), got {tuple(xyz.shape)}")
    xyz = xyz.detach()
    center = (xyz - xyz.mean(dim=1, keepdim=True)).norm(dim=-1)
    keys = torch.stack([xyz[..., 0], xyz[..., 1], xyz[..., 2], center], dim=1)  # (B, 4, L)
    orders = torch.argsort(keys, dim=-1, stable=True)
    return torch.cat([orders, orders.flip(-1)], dim=1)


def _masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, lengths: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm of x (S, C, L) whose statistics use only the first ``lengths[s]`` positions of row s."""
    if lengths is None:
        return norm(x)
    S, C, L = x.shape
    G = norm.num_groups
    valid = (torch.arange(L, device=x.device) < lengths.to(x.device)[:, None]).to(x.dtype)  # (S, L)
    xg = x.reshape(S, G, C // G, L)
    count = (valid.sum(-1) * (C // G)).clamp_min(1)[:, None]  # (S, 1)
    mean = (xg * valid[:, None, None]).sum((2, 3)) / count
    var = (((xg - mean[..., None, None]) * valid[:, None, None]) ** 2).sum((2, 3)) / count
    y = ((xg - mean[..., None, None]) * torch.rsqrt(var + norm.eps)[..., None, None]).reshape(S, C, L)
    if norm.affine:
        y = y * norm.weight[:, None] + norm.bias[:, None]
    return y


class PointSSMBlock(nn.Module):
    """PointMamba2's vanilla Point-SSM block: one Mamba over each sequence, GroupNorm, LeakyReLU, residual.

    The official ``PointMambaNonFFNBlock`` (flemme ``flemme/block/pmamba.py`` at cde13ac, building block
    ``pmamba_non_ffn``): ``h = x + LeakyReLU(GroupNorm(Mamba(x)))``, then ``dense(h)``, a Linear to
    ``out_channels`` when it differs from ``in_channels`` (else the identity). PointMamba2 runs it over the
    k feature-space neighbours of each sampled point (sequences of length k, nearest first) and, in the
    segmentation decoder, over the points of a level (in their sampling order).

    Args:
        in_channels: channels C of the input sequence (the Mamba's d_model).
        out_channels: channels of the output (default ``in_channels``).
        d_state, d_conv, expand: the Mamba's (64, 4, 2 in PointMamba2).
        dt_rank: "auto" = ceil(in_channels / 16).
        conv_bias, bias: the Mamba's (True, False).
        num_groups: GroupNorm groups (8).
        negative_slope: of the LeakyReLU (0.01, the official "lrelu").
        backend: forced backend of the Mamba's ops (None: automatic).
        device, dtype: of the parameters.

    Parameter names are the official block's: ``mamba.*`` (mamba_ssm's Mamba), ``norm.weight``/``norm.bias``,
    ``dense.weight``/``dense.bias`` (only when the sizes differ).

    Shapes:
        forward(x (S, L, C_in), lengths=None) -> (S, L, C_out). With ``lengths`` (S,) only the first
        ``lengths[s]`` positions of row s are real: the GroupNorm statistics skip the rest (the Mamba is
        causal, so padding at the end never reaches the real positions); padded outputs are unspecified.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        conv_bias: bool = True,
        bias: bool = False,
        num_groups: int = 8,
        negative_slope: float = 0.01,
        backend: str | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"PointSSMBlock: {name} must be a positive int, got {v!r}")
        if in_channels % num_groups != 0:
            raise ValueError(f"PointSSMBlock: in_channels={in_channels} must be divisible by num_groups={num_groups}")
        fk = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.negative_slope = negative_slope
        self.mamba = Mamba(
            in_channels, d_state, d_conv, expand, dt_rank, conv_bias=conv_bias, bias=bias, backend=backend, **fk
        )
        self.norm = nn.GroupNorm(num_groups, in_channels, **fk)
        self.dense = nn.Linear(in_channels, out_channels, **fk) if out_channels != in_channels else nn.Identity()

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x (S, L, C_in) -> (S, L, C_out); see the class docstring for ``lengths``."""
        if x.dim() != 3 or x.shape[-1] != self.in_channels:
            raise ValueError(f"PointSSMBlock: x must have shape (S, L, {self.in_channels}), got {tuple(x.shape)}")
        r = _masked_group_norm(self.mamba(x).transpose(1, 2), self.norm, lengths).transpose(1, 2)
        return self.dense(x + F.leaky_relu(r, self.negative_slope))


class PointSSMGroupBlock(nn.Module):
    """PointMamba2's group Point-SSM block on medkernels' multi-order selective scan.

    Args:
        dim: channels C of the point features.
        d_state: SSM state size N (64 in PointMamba2).
        d_conv: depthwise causal conv width (4).
        expand: inner channels = expand * dim (2).
        dt_rank: rank of the dt projections, "auto" = ceil(dim / 16).
        dt_min, dt_max, dt_scale, dt_init_floor: dt projection initialisation (as mamba_ssm).
        conv_bias: bias of the depthwise conv.
        bias: bias of in_proj and out_proj (none in PointMamba2).
        num_groups: GroupNorm groups (8).
        negative_slope: of the LeakyReLUs (0.01, nn.LeakyReLU's default, as the official "lrelu").
        post_normalization: False: out = x + act(norm(f)), the official block at cde13ac (the
            paper's setting); True: out = act(norm(x + f)), the official default from a3df3e5 on.
            The parameters are the same either way.
        backend: forced backend of the scan and conv ops (None: automatic).
        device, dtype: of the parameters (A_logs and Ds stay float32).

    Shapes:
        forward(x (B, L, C), xyz (B, L, 3)) -> (B, L, C); or pass ``orders`` (B, 8, L) int64
        instead of xyz to reuse precomputed orderings (row k: scan k's visiting order, k as in
        :data:`SCAN_ORDERS`, i.e. the official ``sorted_index_list[k]``).
    """

    num_scans = len(SCAN_ORDERS)

    def __init__(
        self,
        dim: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        num_groups: int = 8,
        negative_slope: float = 0.01,
        post_normalization: bool = False,
        backend: str | None = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"PointSSMGroupBlock: {name} must be a positive int, got {v!r}")
        if dim % num_groups != 0:
            raise ValueError(f"PointSSMGroupBlock: dim={dim} must be divisible by num_groups={num_groups}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"PointSSMGroupBlock: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        fk = {"device": device, "dtype": dtype}
        K = self.num_scans
        self.dim, self.d_state, self.d_conv, self.expand = dim, d_state, d_conv, expand
        self.d_inner = expand * dim
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.negative_slope = negative_slope
        self.post_normalization = bool(post_normalization)
        self.backend = backend

        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=bias, **fk)
        self.conv = nn.Conv1d(
            self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias, **fk
        )
        # Per scan: x_proj (no bias), dt_proj, A, D, as K stacked copies of mamba_ssm's initialisation.
        x_proj = torch.empty(K, self.dt_rank + 2 * d_state, self.d_inner, **fk)
        bound = 1 / math.sqrt(self.d_inner)
        nn.init.uniform_(x_proj, -bound, bound)
        self.x_proj_weight = nn.Parameter(x_proj)
        std = self.dt_rank**-0.5 * dt_scale
        self.dt_projs_weight = nn.Parameter(torch.empty(K, self.d_inner, self.dt_rank, **fk).uniform_(-std, std))
        dt = torch.exp(
            torch.rand(K, self.d_inner, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).to(dtype or torch.float32))
        self.dt_projs_bias._no_reinit = True
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).expand(K * self.d_inner, d_state)
        self.A_logs = nn.Parameter(torch.log(A).contiguous())
        self.A_logs._no_weight_decay = True
        self.Ds = nn.Parameter(torch.ones(K * self.d_inner, device=device))
        self.Ds._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, dim, bias=bias, **fk)
        self.norm = nn.GroupNorm(num_groups, dim, **fk)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"dt_rank={self.dt_rank}, scans={self.num_scans}, post_normalization={self.post_normalization}"
        )

    def scan_inputs(self, x: torch.Tensor) -> dict:
        """delta, A, B, C, D, delta_bias of the K scans from the conv output x (B, d_inner, L), all in
        the original point order (the projections are per point, so they commute with the orderings)."""
        batch, _, L = x.shape
        K, N, R = self.num_scans, self.d_state, self.dt_rank
        x_dbl = torch.einsum("bdl,kcd->bkcl", x, self.x_proj_weight.to(x.dtype))  # (B, K, R + 2N, L)
        dts, B, C = torch.split(x_dbl, [R, N, N], dim=2)
        delta = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight.to(x.dtype))
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32  # the scan's parameter dtype
        return {
            "delta": delta.contiguous(),
            "A": -torch.exp(self.A_logs.to(acc)).view(K, self.d_inner, N),
            "B": B.contiguous(),
            "C": C.contiguous(),
            "D": self.Ds.to(acc).view(K, self.d_inner),
            "delta_bias": self.dt_projs_bias.to(acc),
        }

    def forward(
        self, x: torch.Tensor, xyz: torch.Tensor | None = None, *, orders: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, L, C) point features in FPS order, xyz (B, L, 3) their coordinates -> (B, L, C)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"PointSSMGroupBlock: x must have shape (B, L, {self.dim}), got {tuple(x.shape)}")
        if orders is None:
            if xyz is None:
                raise ValueError("PointSSMGroupBlock: pass xyz (B, L, 3) or orders (B, 8, L)")
            if xyz.shape[:2] != x.shape[:2]:
                raise ValueError(
                    f"PointSSMGroupBlock: xyz must have shape (B, L, 3) = {(*x.shape[:2], 3)}, got {tuple(xyz.shape)}"
                )
            orders = point_scan_orders(xyz)
        xz = self.in_proj(x)
        u, z = xz.chunk(2, dim=-1)
        u = ops.causal_conv1d_fn(
            u.transpose(1, 2), self.conv.weight[:, 0], self.conv.bias, activation=None, backend=self.backend
        )
        u = F.leaky_relu(u, self.negative_slope)  # (B, d_inner, L)
        s = self.scan_inputs(u)
        u = u.contiguous()
        if self.backend == "reference":
            y = ops.multi_order_selective_scan_ref(u, orders=orders, **s)
        else:
            y = ops.multi_order_selective_scan(u, orders=orders, **s, backend=self.backend)
        y = y.transpose(1, 2) * F.leaky_relu(z, self.negative_slope)  # (B, L, d_inner)
        out = self.out_proj(y)
        if self.post_normalization:
            out = x + out
        out = F.leaky_relu(self.norm(out.transpose(1, 2)).transpose(1, 2), self.negative_slope)
        return out if self.post_normalization else x + out
