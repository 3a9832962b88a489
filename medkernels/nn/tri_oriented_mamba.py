"""SegMamba's tri-orientated Mamba (ToM): one Mamba block scanning the tokens three ways.

Xing, Ye, Yang, Liu, Zhu, "SegMamba: Long-range Sequential Modeling Mamba For 3D Medical Image Segmentation",
MICCAI 2024 (arXiv 2401.13560). Official code: github.com/ge-xing/SegMamba (commit cff3597), the forked mamba_ssm
``mamba/mamba_ssm/modules/mamba_simple.py`` (class ``Mamba`` with ``bimamba_type="v3"`` and ``nslices``) and
``model_segmamba/segmamba.py`` (class ``MambaLayer``). The fork's v3 forward, on tokens (B, L, C):

    x, z = in_proj(h).chunk(2)                      two (B, d_inner, L), shared by the three directions
    forward:      y_f = scan_f(silu(conv1d(x)))                     * silu(z)
    reverse:      y_b = flip(scan_b(silu(conv1d_b(flip(x)))))       * silu(z)
    inter-slice:  y_s = unslice(scan_s(silu(conv1d_s(slice(x)))))   * silu(z)
    out = out_proj(y_f + y_b + y_s)                 summed, no averaging

``slice`` is the fork's ``torch.stack(xz.chunk(nslices, -1), -1).flatten(-2)``: the L tokens cut into
``nslices`` runs of M = L / nslices, read run-interleaved (token s * M + j is step j * nslices + s), so
that in SegMamba's encoder (nslices 64/32/16/8 at the 64^3/32^3/16^3/8^3 stages of a 128^3 input) the scan
walks through depth at every in-plane position. Each direction has its own depthwise causal conv (along
its own order), x_proj, dt_proj, A and D (the fork's ``conv1d``/``conv1d_b``/``conv1d_s``, ``x_proj``/
``x_proj_b``/``x_proj_s``, ``dt_proj``/``dt_proj_b``/``dt_proj_s``, ``A_log``/``A_b_log``/``A_s_log``,
``D``/``D_b``/``D_s``); ``in_proj`` and ``out_proj`` are shared. The gate silu(z) multiplies each direction
inside the fork's ``mamba_inner_fn_no_out_proj``; here the sum is gated once (the same up to rounding).

Design. The three directions have different depthwise convolutions, so their scan inputs u differ and
the shared-u multi-order op cannot run them as one K = 3 call; they run as three K = 1 calls of
:func:`medkernels.ops.multi_order_selective_scan`, with no permuted copy of xz, z or the outputs:

* forward: causal conv and scan in the original token order;
* reverse: the fork's flip -> causal conv -> flip is an anticausal conv in the original order
  (``causal_conv1d_fn`` of x right-padded by d_conv - 1 with the taps reversed, shifted back by d_conv - 1),
  and the scan walks the original tokens through the reversed ``orders`` index, its output already in the
  original order;
* inter-slice: one run-interleaved copy of x (d_inner channels, not the fork's 2 d_inner of xz), the causal
  conv and the scan in that order (identity ``orders``), and the output added back through a strided view.
  Scanning the original-order tokens through the run-interleaved index instead was measured 2.3x slower in
  the forward and 1.7x in the backward on the CPU kernel (B 1, d_inner 96, L 64^3, nslices 64: consecutive
  steps touch tokens M apart), far more than the copy.

The projections run channels-first (x_proj and dt_proj as batched products on (B, d_inner, L)), so neither u
nor delta, B, C is ever transposed; the fork's ``(b l) d`` layout costs a transposed copy of u per direction
and of B and C on the CPU. The three scans' outputs are summed, then gated once.

Parameter names, shapes, defaults and initialisation are the fork's, so a SegMamba checkpoint loads with
``strict=True`` (``TriOrientedMambaLayer`` holds it as ``mamba`` next to ``norm``, as the official
``MambaLayer``). As in the fork, only ``dt_proj`` gets mamba_ssm's dt initialisation: ``dt_proj_b`` and
``dt_proj_s`` keep nn.Linear's default, and the parameters are created in the fork's order, so a seeded
construction gives the fork's values. Not supported: decoding (``inference_params``/``step``: the reverse and
inter-slice scans are not causal) and the fork's other ``bimamba_type`` values ("v3" only: SegMamba's).
The scan sums and the gate run in float32 (float64 for float64 inputs), as the fork's CUDA kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medkernels import ops
from medkernels._typing import Backend, Device, DType

__all__ = ["TriOrientedMamba", "TriOrientedMambaLayer", "slice_order"]

_DIRECTIONS = ("", "_b", "_s")  # forward, reverse, inter-slice: the fork's parameter suffixes


def slice_order(seqlen: int, nslices: int, device: Device = None) -> torch.Tensor:
    """The fork's inter-slice visiting order.

    Args:
        seqlen: L, a multiple of ``nslices``.
        nslices: number of runs the tokens are cut into.
        device: of the result.

    Returns:
        (L,) int64: step p of the inter-slice scan visits token ``(p % nslices) * (L // nslices) + p // nslices``
        (the fork's ``torch.stack(x.chunk(nslices, -1), -1).flatten(-2)``).
    """
    if nslices < 1 or seqlen % nslices != 0:
        raise ValueError(f"slice_order: seqlen={seqlen} must be a multiple of nslices={nslices}")
    p = torch.arange(seqlen, device=device)
    return (p % nslices) * (seqlen // nslices) + p // nslices


class TriOrientedMamba(nn.Module):
    """The fork's ``Mamba(bimamba_type="v3", nslices=...)`` on medkernels' ops: ``(B, L, d_model)`` tokens.

    Args:
        d_model: model width C.
        d_state: SSM state size N.
        d_conv: depthwise causal conv width.
        expand: d_inner = expand * d_model.
        dt_rank: rank of the dt projections, "auto" = ceil(d_model / 16).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: ``dt_proj``'s initialisation (as mamba_ssm).
        conv_bias: bias in the three depthwise convs; bias: bias in in_proj/out_proj.
        use_fast_path, layer_idx: accepted for the fork's signature; unused.
        device, dtype: of the parameters (the A logs and Ds stay float32, as upstream).
        bimamba_type: must be "v3" (SegMamba's tri-orientated scan).
        nslices: runs of the inter-slice scan (the fork's default 5; SegMamba sets 64, 32, 16, 8 per stage);
            the sequence length must be a multiple of it.
        backend: medkernels backend of the conv and scan ops (None automatic, "cpu", "triton", "reference").

    Shapes:
        forward(hidden_states (B, L, d_model)) -> (B, L, d_model), L a multiple of ``nslices``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        layer_idx: int | None = None,
        device: Device = None,
        dtype: DType = None,
        bimamba_type: str = "v3",
        nslices: int = 5,
        *,
        backend: Backend = None,
    ) -> None:
        super().__init__()
        for name, v in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("nslices", nslices)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TriOrientedMamba: {name} must be a positive int, got {v!r}")
        if not isinstance(expand, (int, float)) or int(expand * d_model) < 1:
            raise ValueError(f"TriOrientedMamba: expand must make d_inner = expand * d_model >= 1, got {expand!r}")
        if bimamba_type != "v3":
            raise ValueError(f"TriOrientedMamba: bimamba_type must be 'v3' (SegMamba's), got {bimamba_type!r}")
        if dt_init not in ("constant", "random"):
            raise ValueError(f"TriOrientedMamba: dt_init must be 'constant' or 'random', got {dt_init!r}")
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError(f"TriOrientedMamba: dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"TriOrientedMamba: need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        fk = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path, self.layer_idx = use_fast_path, layer_idx
        self.bimamba_type, self.nslices = bimamba_type, nslices
        self.backend = backend
        E, N, R = self.d_inner, d_state, self.dt_rank

        def conv() -> nn.Conv1d:
            return nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=conv_bias, **fk)

        def log_a() -> nn.Parameter:  # S4D real initialisation, kept in float32
            A = torch.arange(1, N + 1, dtype=torch.float32, device=device).expand(E, N).contiguous()
            p = nn.Parameter(torch.log(A))
            p._no_weight_decay = True
            return p

        def ones() -> nn.Parameter:
            p = nn.Parameter(torch.ones(E, device=device))
            p._no_weight_decay = True
            return p

        # Created in the fork's order (the same random stream for a seeded construction).
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias, **fk)
        self.conv1d = conv()
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False, **fk)
        self.dt_proj = nn.Linear(R, E, bias=True, **fk)
        std = R**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(E, **fk) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # the inverse of softplus
        self.dt_proj.bias._no_reinit = True
        self.A_log = log_a()
        self.D = ones()
        # reverse, then inter-slice: nn defaults for the convs, x_proj and dt_proj (the fork's)
        self.A_b_log = log_a()
        self.conv1d_b = conv()
        self.x_proj_b = nn.Linear(E, R + 2 * N, bias=False, **fk)
        self.dt_proj_b = nn.Linear(R, E, bias=True, **fk)
        self.D_b = ones()
        self.A_s_log = log_a()
        self.conv1d_s = conv()
        self.x_proj_s = nn.Linear(E, R + 2 * N, bias=False, **fk)
        self.dt_proj_s = nn.Linear(R, E, bias=True, **fk)
        self.D_s = ones()
        self.out_proj = nn.Linear(E, d_model, bias=bias, **fk)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_state={self.d_state}, d_conv={self.d_conv}, expand={self.expand}, "
            f"dt_rank={self.dt_rank}, nslices={self.nslices}, bimamba_type={self.bimamba_type!r}"
        )

    def _scan(self, u: torch.Tensor, suffix: str, orders: torch.Tensor) -> torch.Tensor:
        """One direction's selective scan (no gate) of its conv output u (B, d_inner, L), whose tokens are
        visited in ``orders`` (B, 1, L) order; returns (B, d_inner, L) in u's token order."""
        batch, E, L = u.shape
        N, R = self.d_state, self.dt_rank
        acc = torch.float64 if u.dtype == torch.float64 else torch.float32
        x_proj: nn.Linear = getattr(self, "x_proj" + suffix)
        dt_proj: nn.Linear = getattr(self, "dt_proj" + suffix)
        # (R + 2N, E) @ (B, E, L): channels-first in and out, so no transposed copy of u, B or C
        # (bmm of the expanded weights: torch.matmul folds a 2D @ 3D product through transposed copies)
        x_dbl = torch.bmm(x_proj.weight.expand(batch, -1, -1), u)  # (B, R + 2N, L)
        dt, B, C = torch.split(x_dbl, [R, N, N], dim=1)
        delta = torch.bmm(dt_proj.weight.expand(batch, -1, -1), dt)  # (B, E, L)
        args = (
            u,
            delta[:, None],
            -torch.exp(getattr(self, "A" + suffix + "_log").to(acc))[None],
            B[:, None],
            C[:, None],
            getattr(self, "D" + suffix).to(acc)[None],
            dt_proj.bias.to(acc)[None],
            orders,
        )
        if self.backend == "reference":
            return ops.multi_order_selective_scan_ref(*args, delta_softplus=True)
        return ops.multi_order_selective_scan(*args, delta_softplus=True, backend=self.backend)

    def _conv(self, x: torch.Tensor, suffix: str, reverse: bool = False) -> torch.Tensor:
        """silu(depthwise causal conv) of x (B, d_inner, L) along its token order, or with ``reverse`` the
        fork's flip -> causal conv -> flip, computed in x's order as an anticausal conv."""
        conv: nn.Conv1d = getattr(self, "conv1d" + suffix)
        w = conv.weight[:, 0]
        if not reverse:
            return ops.causal_conv1d_fn(x, w, conv.bias, activation="silu", backend=self.backend)
        pad = self.d_conv - 1
        out = ops.causal_conv1d_fn(F.pad(x, (0, pad)), w.flip(-1), conv.bias, activation="silu", backend=self.backend)
        return out[..., pad:]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Args: hidden_states ``(B, L, d_model)``, L a multiple of ``nslices``. Returns ``(B, L, d_model)``."""
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"TriOrientedMamba: hidden_states must be (batch, seqlen, d_model={self.d_model}), got "
                f"{tuple(hidden_states.shape)}"
            )
        batch, L, _ = hidden_states.shape
        n = self.nslices
        if L % n != 0:
            raise ValueError(f"TriOrientedMamba: the sequence length {L} must be a multiple of nslices={n}")
        M, E = L // n, self.d_inner
        # (B, L, C) -> (B, 2E, L) rows of unit stride in one matmul, as mamba_ssm
        xz = (self.in_proj.weight @ hidden_states.reshape(batch * L, self.d_model).t()).view(2 * E, batch, L)
        xz = xz.permute(1, 0, 2)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        x, z = xz.chunk(2, dim=1)  # (B, E, L) each
        step = torch.arange(L, device=x.device)
        forward = step.expand(batch, 1, L)
        reverse = step.flip(0).expand(batch, 1, L)
        y = self._scan(self._conv(x, ""), "", forward)
        y = y + self._scan(self._conv(x, "_b", reverse=True), "_b", reverse)
        xs = x.view(batch, E, n, M).transpose(2, 3).reshape(batch, E, L)  # run-interleaved copy
        ys = self._scan(self._conv(xs, "_s"), "_s", forward)
        y = (y.view(batch, E, n, M) + ys.view(batch, E, M, n).transpose(2, 3)).view(batch, E, L)
        acc = torch.float64 if y.dtype == torch.float64 else torch.float32
        y = (y.to(acc) * F.silu(z.to(acc))).to(hidden_states.dtype)
        return self.out_proj(y.transpose(1, 2))


class TriOrientedMambaLayer(nn.Module):
    """SegMamba's ``MambaLayer`` on ``[B, C, D, H, W]``: LayerNorm over channels, :class:`TriOrientedMamba` on
    the D * H * W tokens (row-major), plus the input (residual).

    Args:
        dim: channels C.
        d_state, d_conv, expand: of the Mamba (16, 4, 2 in SegMamba).
        num_slices: the Mamba's ``nslices`` (SegMamba: 64, 32, 16, 8 at stages 1-4).
        backend: medkernels backend of the Mamba's ops.
        device, dtype: of the parameters.

    Shapes:
        forward(x (B, C, *spatial)) -> same shape; prod(spatial) a multiple of ``num_slices``.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        num_slices: int = 5,
        *,
        backend: Backend = None,
        device: Device = None,
        dtype: DType = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.mamba = TriOrientedMamba(
            dim, d_state, d_conv, expand, nslices=num_slices, backend=backend, device=device, dtype=dtype
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``(B, C, *spatial)`` -> ``(B, C, *spatial)``."""
        if x.dim() < 3 or x.shape[1] != self.dim:
            raise ValueError(f"TriOrientedMambaLayer: x must be (B, {self.dim}, *spatial), got {tuple(x.shape)}")
        B, C = x.shape[:2]
        tokens = x.reshape(B, C, -1).transpose(1, 2)
        out = self.mamba(self.norm(tokens))
        return out.transpose(1, 2).reshape(x.shape) + x
