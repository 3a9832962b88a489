"""SS2D, VMamba's 2D selective scan, and the VSS block, as VM-UNet uses them.

Liu et al., "VMamba: Visual State Space Model" (arXiv 2401.10166) and Ruan & Xiang, "VM-UNet: Vision Mamba UNet
for Medical Image Segmentation" (arXiv 2402.02491); official code github.com/JCruan519/VM-UNet,
``models/vmunet/vmamba.py`` (classes ``SS2D`` with ``forward_corev0`` and ``VSSBlock``; commit 43c495b, read
2026-12), itself a copy of an early github.com/MzeroMiko/VMamba ``vmamba.py``.

SS2D on a channels-last map ``x [B, H, W, C]`` (d_inner = expand * C, L = H * W, K = 4):

    u, z = in_proj(x).chunk(2)                        2 x [B, H, W, d_inner]
    u = SiLU(depthwise Conv2d(u))                     k = d_conv (3), padding (d_conv - 1) // 2, NCHW
    y = sum_k unpermute_k(scan_k(permute_k(u)))       medkernels.ops.multi_order_selective_scan, one call
    out = dropout(out_proj(out_norm(y) * SiLU(z)))

The four cross-scan orderings (the official ``CrossScan``: ``xs = cat([x_hwwh, flip(x_hwwh)])`` with
``x_hwwh = stack([row-major, column-major])``), in the official k order (:data:`CROSS_SCAN_ORDERS`):
k = 0 row-major (h-w, token ``h * W + w`` at step ``h * W + w``), k = 1 column-major (w-h, token ``h * W + w``
at step ``w * H + h``), k = 2 the reverse of k = 0, k = 3 the reverse of k = 1. Scan k has its own
``x_proj_weight[k]``, ``dt_projs_weight[k]``, ``dt_projs_bias[k]``, A and D (rows ``k * d_inner ...`` of
``A_logs`` / ``Ds``), with ``delta_softplus=True`` and the dt bias added before the softplus, as the official
``selective_scan_fn`` call. The official merge ``out_y[:, 0] + flip(out_y[:, 2]) + transpose(out_y[:, 1]) +
transpose(flip(out_y[:, 3]))`` maps every scan back to the original token order and sums; so does the op.

Where this differs from the official computation (same results to rounding in float32):

- No permuted copies: the official code builds ``xs [B, 4, d_inner, L]`` (four copies of u), projects each
  copy with its x_proj / dt_proj, and runs one ``selective_scan_fn`` on the ``(B, 4 * d_inner, L)`` stack.
  The projections are per token, so here they run once per k on u in the ORIGINAL token order, and the scan
  reads u, delta, B, C through the orderings' index (no copy of u, no permuted delta/B/C, no un-permuting).
- ``in_proj`` runs as two GEMMs on its weight's halves: u straight into the conv's ``(B, d_inner, H, W)`` layout
  (the official permutes and copies it), z channels-last; and the four x_proj run as one GEMM whose rows are
  grouped dt / B / C, so that delta comes out of the dt_proj GEMM as a contiguous ``(B, 4, d_inner, L)`` (the
  parameters are used as stored; the state_dict is unchanged).
- The official forward casts the scan inputs to float32 and sums the four outputs in float32 (``assert
  out_y.dtype == torch.float``). Here the scan computes in float32 on inputs of the model's dtype and returns
  the sum in that dtype (the same for float32 models; bfloat16/float16 models round the sum once more before
  ``out_norm``).
- ``forward_corev1`` (the ``selective_scan`` package's kernel) computes the same thing; not separate here.

Parameter names and shapes are the official SS2D's, so its state_dict loads with ``strict=True``:
``in_proj.weight`` (2 d_inner, C), ``conv2d.weight`` (d_inner, 1, d_conv, d_conv), ``conv2d.bias`` (d_inner),
``x_proj_weight`` (4, dt_rank + 2 N, d_inner), ``dt_projs_weight`` (4, d_inner, dt_rank), ``dt_projs_bias``
(4, d_inner), ``A_logs`` (4 d_inner, N), ``Ds`` (4 d_inner), ``out_norm.weight`` / ``.bias`` (d_inner),
``out_proj.weight`` (C, d_inner) (plus ``in_proj.bias`` / ``out_proj.bias`` with ``bias=True``). Initialisation
as the official: four stacked ``nn.Linear`` default inits for x_proj, mamba_ssm's dt init per k, S4D-real
``A_logs``, ones ``Ds`` (``_no_weight_decay``; the dt bias ``_no_reinit``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medkernels import ops
from medkernels._typing import Backend, Device, DType

from ._layers import DropPath

__all__ = ["SS2D", "VSSBlock", "cross_scan_orders", "CROSS_SCAN_ORDERS"]

CROSS_SCAN_ORDERS = ("hw", "wh", "hw_reversed", "wh_reversed")


def cross_scan_orders(height: int, width: int, device: Device = None) -> torch.Tensor:
    """VMamba's four cross-scan orderings of an ``height x width`` map, in the order of :data:`CROSS_SCAN_ORDERS`.

    Tokens are numbered row-major (``h * width + w``, the layout of ``[B, H, W, C]``); row k lists the tokens
    in scan k's visiting order: row-major, column-major, and the reverse of each (the official ``CrossScan``).

    Args:
        height, width: the map's size (each >= 1).
        device: of the result.

    Returns:
        (4, height * width) int64.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cross_scan_orders: height and width must be >= 1, got {height}, {width}")
    hw = torch.arange(height * width, device=device)
    wh = hw.view(height, width).t().reshape(-1)  # step w * H + h visits token h * W + w
    return torch.stack([hw, wh, hw.flip(0), wh.flip(0)])


class SS2D(nn.Module):
    """VMamba's 2D selective scan (four cross-scan directions) on medkernels' multi-order selective scan.

    Args:
        d_model: channels C of the map.
        d_state: SSM state size N (16).
        d_conv: depthwise Conv2d kernel size (3); an odd size keeps the map's size.
        expand: inner channels d_inner = int(expand * d_model) (2).
        dt_rank: rank of the dt projections, "auto" = ceil(d_model / 16).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: dt projection initialisation (as mamba_ssm;
            dt_init "random" or "constant").
        dropout: dropout after out_proj (0: none, as the official ``None``).
        conv_bias: bias of the depthwise conv.
        bias: bias of in_proj and out_proj.
        backend: forced backend of the scan (None automatic, "cpu", "triton", "reference": the pure-PyTorch
            ``multi_order_selective_scan_ref``).
        device, dtype: of the parameters (A_logs and Ds stay float32, as the official).

    Shapes:
        forward(x (B, H, W, C)) -> (B, H, W, C).
    """

    num_scans = len(CROSS_SCAN_ORDERS)

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        dropout: float = 0.0,
        conv_bias: bool = True,
        bias: bool = False,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"SS2D: {name} must be a positive int, got {v!r}")
        if not expand > 0 or int(expand * d_model) < 1:
            raise ValueError(f"SS2D: expand must give at least one inner channel, got expand={expand!r}")
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError(f"SS2D: dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        if dt_init not in ("random", "constant"):
            raise ValueError(f"SS2D: dt_init must be 'random' or 'constant', got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"SS2D: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SS2D: dropout must be in [0, 1), got {dropout}")
        fk = {"device": device, "dtype": dtype}
        K = self.num_scans
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.backend = backend
        D, R, N = self.d_inner, self.dt_rank, d_state

        self.in_proj = nn.Linear(d_model, 2 * D, bias=bias, **fk)
        self.conv2d = nn.Conv2d(D, D, d_conv, groups=D, bias=conv_bias, padding=(d_conv - 1) // 2, **fk)
        # K stacked nn.Linear(d_inner, R + 2N, bias=False) default initialisations (kaiming-uniform a=sqrt(5)).
        bound = 1 / math.sqrt(D)
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * N, D, **fk).uniform_(-bound, bound))
        # K mamba_ssm dt projections: weight U(+-R^-0.5 dt_scale) (or that constant), bias = softplus^-1(dt).
        std = R**-0.5 * dt_scale
        w = torch.empty(K, D, R, **fk)
        self.dt_projs_weight = nn.Parameter(w.fill_(std) if dt_init == "constant" else w.uniform_(-std, std))
        dt = torch.exp(torch.rand(K, D, **fk) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(
            min=dt_init_floor
        )
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.dt_projs_bias._no_reinit = True
        A = torch.arange(1, N + 1, dtype=torch.float32, device=device).expand(K * D, N)
        self.A_logs = nn.Parameter(torch.log(A).contiguous())
        self.A_logs._no_weight_decay = True
        self.Ds = nn.Parameter(torch.ones(K * D, device=device))
        self.Ds._no_weight_decay = True
        self.out_norm = nn.LayerNorm(D, **fk)
        self.out_proj = nn.Linear(D, d_model, bias=bias, **fk)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else None

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"dt_rank={self.dt_rank}, scans={self.num_scans}"
        )

    def scan_inputs(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """delta, A, B, C, D, delta_bias of the four scans from the conv output u (B, d_inner, L), every
        per-token tensor in the ORIGINAL token order (the projections are per token, so they commute with the
        orderings): delta (B, 4, d_inner, L), B/C (B, 4, N, L) in u's dtype; A (4, d_inner, N), D and
        delta_bias (4, d_inner) float32 (float64 for float64 u)."""
        K, N, R = self.num_scans, self.d_state, self.dt_rank
        pdt = torch.float64 if u.dtype == torch.float64 else torch.float32
        batch, _, L = u.shape
        # One GEMM for the four x_proj, its rows grouped [dt of every k, B of every k, C of every k], so that
        # the dt block and the delta GEMM give contiguous (B, K, ., L) tensors without a permuting copy.
        w = self.x_proj_weight.to(u.dtype)
        w = torch.cat(
            [w[:, :R].reshape(K * R, -1), w[:, R : R + N].reshape(K * N, -1), w[:, R + N :].reshape(K * N, -1)]
        )
        x_dbl = torch.matmul(w, u)  # (B, K (R + 2N), L)
        dts = x_dbl[:, : K * R].view(batch, K, R, L)
        B = x_dbl[:, K * R : K * (R + N)].reshape(batch, K, N, L)
        C = x_dbl[:, K * (R + N) :].reshape(batch, K, N, L)
        delta = torch.matmul(self.dt_projs_weight.to(u.dtype), dts)  # (B, K, d_inner, L)
        return {
            "delta": delta.contiguous(),
            "A": -torch.exp(self.A_logs.to(pdt)).view(K, self.d_inner, N),
            "B": B.contiguous(),
            "C": C.contiguous(),
            "D": self.Ds.to(pdt).view(K, self.d_inner),
            "delta_bias": self.dt_projs_bias.to(pdt),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) channels-last map -> (B, H, W, C)."""
        if x.dim() != 4 or x.shape[-1] != self.d_model:
            raise ValueError(f"SS2D: x must have shape (B, H, W, {self.d_model}), got {tuple(x.shape)}")
        batch, H, W, _ = x.shape
        if H < 1 or W < 1:
            raise ValueError(f"SS2D: the map must have at least one pixel, got {H}x{W}")
        # in_proj in two GEMMs: u straight into the conv's NCHW layout (no permuting copy), z channels-last
        D, wb = self.d_inner, self.in_proj.bias
        u = torch.matmul(self.in_proj.weight[:D], x.reshape(batch, H * W, -1).transpose(1, 2))  # (B, d_inner, L)
        if wb is not None:
            u = u + wb[:D, None]
        z = F.linear(x, self.in_proj.weight[D:], None if wb is None else wb[D:])  # (B, H, W, d_inner)
        u = F.silu(self.conv2d(u.view(batch, D, H, W))).view(batch, D, H * W)
        s = self.scan_inputs(u)
        orders = cross_scan_orders(H, W, device=x.device)[None].expand(batch, -1, -1)
        if self.backend == "reference":
            y = ops.multi_order_selective_scan_ref(u, orders=orders, **s, delta_softplus=True)
        else:
            y = ops.multi_order_selective_scan(u, orders=orders, **s, delta_softplus=True, backend=self.backend)
        y = self.out_norm(y.transpose(1, 2).reshape(batch, H, W, self.d_inner))
        out = self.out_proj(y * F.silu(z))
        return out if self.dropout is None else self.dropout(out)


class VSSBlock(nn.Module):
    """VMamba's VSS block as VM-UNet builds it: ``x + drop_path(self_attention(ln_1(x)))`` with an :class:`SS2D`.

    Official names (``ln_1``, ``self_attention``, ``drop_path``: no parameters). The official class defaults
    to ``LayerNorm(eps=1e-6)``; VM-UNet's VSSM passes ``nn.LayerNorm`` (eps 1e-5) to every block.

    Args:
        hidden_dim: channels C.
        drop_path: stochastic-depth probability of the residual branch.
        norm_eps: epsilon of ``ln_1`` (1e-6 as the official class default; VM-UNet uses 1e-5).
        attn_drop_rate: SS2D's dropout.
        d_state: SS2D's state size.
        backend, device, dtype: as :class:`SS2D`.
        **kwargs: SS2D's other arguments (``d_conv``, ``expand``, ``dt_rank``, ...).

    Shapes:
        forward(x (B, H, W, C)) -> (B, H, W, C).
    """

    def __init__(
        self,
        hidden_dim: int,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
        attn_drop_rate: float = 0.0,
        d_state: int = 16,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
        **kwargs,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=norm_eps, **fk)
        self.self_attention = SS2D(hidden_dim, d_state=d_state, dropout=attn_drop_rate, backend=backend, **fk, **kwargs)
        self.drop_path = DropPath(drop_path)

    @property
    def backend(self) -> Backend:
        """The scan backend of the block's SS2D (settable)."""
        return self.self_attention.backend

    @backend.setter
    def backend(self, value: Backend) -> None:
        self.self_attention.backend = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) -> (B, H, W, C)."""
        return x + self.drop_path(self.self_attention(self.ln_1(x)))
