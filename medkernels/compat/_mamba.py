"""The ``mamba_ssm`` package (mamba_ssm 2.x's Mamba-1 API), served by medkernels.

Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv 2312.00752).

Modules: ``mamba_ssm`` (``Mamba``, ``selective_scan_fn``, ``mamba_inner_fn``, ``__version__``),
``mamba_ssm.ops.selective_scan_interface`` (``selective_scan_fn``, ``selective_scan_ref``,
``mamba_inner_fn``, ``mamba_inner_ref``), ``mamba_ssm.ops.triton.selective_state_update``
(``selective_state_update``, ``selective_state_update_ref``), ``mamba_ssm.modules.mamba_simple``
(``Mamba``) and ``mamba_ssm.utils.generation`` (``InferenceParams``). ``Mamba`` is
:class:`medkernels.nn.Mamba` (mamba_ssm's constructor and state_dict names). Not served: Mamba2, Mamba3,
MambaLMHeadModel (an ImportError says so).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medkernels import nn as mknn
from medkernels import ops

from ._finder import TableProvider

__all__ = [
    "selective_scan_fn",
    "selective_scan_ref",
    "mamba_inner_fn",
    "mamba_inner_ref",
    "selective_state_update",
    "selective_state_update_ref",
]

VERSION = "2.3.2.post1"

selective_scan_fn = ops.selective_scan_fn
selective_scan_ref = ops.selective_scan_ref
Mamba = mknn.Mamba
InferenceParams = mknn.InferenceParams


def _rms_norm(t: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in float32, cast back (mamba_ssm's ``rms_norm_forward``)."""
    if weight is None:
        return t
    acc = t.float()
    return (acc * torch.rsqrt(acc.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(t.dtype)


def _mamba_inner(
    conv,
    scan,
    xz,
    conv1d_weight,
    conv1d_bias,
    x_proj_weight,
    delta_proj_weight,
    out_proj_weight,
    out_proj_bias,
    A,
    B,
    C,
    D,
    delta_bias,
    B_proj_bias,
    C_proj_bias,
    delta_softplus,
    b_rms_weight=None,
    c_rms_weight=None,
    dt_rms_weight=None,
    eps=1e-6,
):
    fn = "mamba_inner_fn"
    for name, t in (("xz", xz), ("conv1d_weight", conv1d_weight), ("A", A)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if xz.dim() != 3 or xz.shape[1] % 2 != 0:
        raise ValueError(f"{fn}: xz must be (batch, 2 * dim, seqlen), got {tuple(xz.shape)}")
    if conv1d_weight.dim() != 3 or conv1d_weight.shape[1] != 1:
        raise ValueError(f"{fn}: conv1d_weight must be (dim, 1, width), got {tuple(conv1d_weight.shape)}")
    if A.is_complex():
        raise NotImplementedError(f"{fn}: complex A is not supported by medkernels")
    batch, _, seqlen = xz.shape
    delta_rank = delta_proj_weight.shape[1]
    d_state = A.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = conv(x, conv1d_weight[:, 0], conv1d_bias, activation="silu")
    x_dbl = F.linear(x.transpose(1, 2).reshape(batch * seqlen, -1), x_proj_weight)  # (b l, r + 2N)
    delta = (delta_proj_weight @ x_dbl[:, :delta_rank].t()).reshape(-1, batch, seqlen).permute(1, 0, 2)
    if B is None:
        B = x_dbl[:, delta_rank : delta_rank + d_state]
        if B_proj_bias is not None:
            B = B + B_proj_bias.to(B.dtype)
        B = _rms_norm(B, b_rms_weight, eps).reshape(batch, seqlen, d_state).transpose(1, 2).contiguous()
    if C is None:
        C = x_dbl[:, -d_state:]
        if C_proj_bias is not None:
            C = C + C_proj_bias.to(C.dtype)
        C = _rms_norm(C, c_rms_weight, eps).reshape(batch, seqlen, d_state).transpose(1, 2).contiguous()
    if dt_rms_weight is not None:
        delta = _rms_norm(delta.transpose(1, 2), dt_rms_weight, eps).transpose(1, 2)
    y = scan(x, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return F.linear(y.transpose(1, 2), out_proj_weight, out_proj_bias)


def mamba_inner_fn(
    xz,
    conv1d_weight,
    conv1d_bias,
    x_proj_weight,
    delta_proj_weight,
    out_proj_weight,
    out_proj_bias,
    A,
    B=None,
    C=None,
    D=None,
    delta_bias=None,
    B_proj_bias=None,
    C_proj_bias=None,
    delta_softplus=True,
    checkpoint_lvl=1,
    b_rms_weight=None,
    c_rms_weight=None,
    dt_rms_weight=None,
    b_c_dt_rms_eps=1e-6,
):
    """mamba_ssm's fused Mamba block interior, on medkernels' causal conv and selective scan.

    Args:
        xz: (batch, 2 * dim, seqlen), the in_proj output: x then the gate z.
        conv1d_weight: (dim, 1, width); conv1d_bias: optional (dim,).
        x_proj_weight: (dt_rank + 2 * dstate, dim); delta_proj_weight: (dim, dt_rank).
        out_proj_weight: (d_model, dim); out_proj_bias: optional (d_model,).
        A: (dim, dstate) float32.
        B, C: None (variable, projected from x) or fixed (dim, dstate).
        D, delta_bias: optional (dim,) float32.
        B_proj_bias, C_proj_bias: optional (dstate,) added to the projected B, C.
        delta_softplus: softplus on delta + delta_bias.
        checkpoint_lvl: 0 or 1, accepted (autograd saves what medkernels' ops need).
        b_rms_weight, c_rms_weight, dt_rms_weight: optional RMSNorm weights on B, C (dstate,) and delta (dim,).
        b_c_dt_rms_eps: their epsilon.

    Returns:
        (batch, seqlen, d_model).
    """
    if checkpoint_lvl not in (0, 1):
        raise ValueError(f"mamba_inner_fn: checkpoint_lvl must be 0 or 1, got {checkpoint_lvl!r}")
    return _mamba_inner(
        ops.causal_conv1d_fn,
        ops.selective_scan_fn,
        xz,
        conv1d_weight,
        conv1d_bias,
        x_proj_weight,
        delta_proj_weight,
        out_proj_weight,
        out_proj_bias,
        A,
        B,
        C,
        D,
        delta_bias,
        B_proj_bias,
        C_proj_bias,
        delta_softplus,
        b_rms_weight,
        c_rms_weight,
        dt_rms_weight,
        b_c_dt_rms_eps,
    )


def mamba_inner_ref(
    xz,
    conv1d_weight,
    conv1d_bias,
    x_proj_weight,
    delta_proj_weight,
    out_proj_weight,
    out_proj_bias,
    A,
    B=None,
    C=None,
    D=None,
    delta_bias=None,
    B_proj_bias=None,
    C_proj_bias=None,
    delta_softplus=True,
):
    """mamba_ssm's ``mamba_inner_ref``: :func:`mamba_inner_fn` on the pure-PyTorch references
    (:func:`medkernels.ops.causal_conv1d_ref`, :func:`medkernels.ops.selective_scan_ref`)."""
    return _mamba_inner(
        ops.causal_conv1d_ref,
        ops.selective_scan_ref,
        xz,
        conv1d_weight,
        conv1d_bias,
        x_proj_weight,
        delta_proj_weight,
        out_proj_weight,
        out_proj_bias,
        A,
        B,
        C,
        D,
        delta_bias,
        B_proj_bias,
        C_proj_bias,
        delta_softplus,
    )


def selective_state_update(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, state_batch_indices=None
):
    """One selective-scan decoding step, updating ``state`` in place (mamba_ssm's Triton
    ``selective_state_update``; here plain PyTorch, any device, computed in float32).

    Args:
        state: (batch, dim, dstate) or (batch, nheads, dim, dstate); with ``state_batch_indices`` a cache
            (cache_size, ...) of which rows ``state_batch_indices`` are used.
        x, dt: (batch, dim) or (batch, nheads, dim).
        A: (dim, dstate) or (nheads, dim, dstate).
        B, C: (batch, dstate) or (batch, ngroups, dstate); nheads % ngroups == 0.
        D: optional (dim,) or (nheads, dim).
        z: optional gate shaped like x.
        dt_bias: optional (dim,) or (nheads, dim).
        dt_softplus: softplus on dt + dt_bias.
        state_batch_indices: optional int (batch,) rows of ``state``.

    Returns:
        out shaped like x, in x's dtype.
    """
    fn = "selective_state_update"
    for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    has_heads = state.dim() == 4
    if state.dim() not in (3, 4):
        raise ValueError(
            f"{fn}: state must be (batch, dim, dstate) or (batch, nheads, dim, dstate), got {state.dim()}D"
        )

    def heads(t, rank, name):
        if t is None:
            return None
        if t.dim() == rank - 1:
            return t.unsqueeze(1)
        if t.dim() != rank:
            raise ValueError(f"{fn}: {name} has {t.dim()} dims, expected {rank - 1} or {rank}")
        return t

    st = state if has_heads else state.unsqueeze(1)
    x4, dt4, z4 = heads(x, 3, "x"), heads(dt, 3, "dt"), heads(z, 3, "z")
    A4 = A.unsqueeze(0) if A.dim() == 2 else A
    B4 = B.unsqueeze(1) if B.dim() == 2 else B
    C4 = C.unsqueeze(1) if C.dim() == 2 else C
    D4 = None if D is None else (D.unsqueeze(0) if D.dim() == 1 else D)
    bias4 = None if dt_bias is None else (dt_bias.unsqueeze(0) if dt_bias.dim() == 1 else dt_bias)
    batch, nheads, dim = x4.shape
    rows = st if state_batch_indices is None else st[state_batch_indices.long()]
    dstate = rows.shape[-1]
    if rows.shape != (batch, nheads, dim, dstate):
        raise ValueError(f"{fn}: state {tuple(state.shape)} does not match x {tuple(x.shape)}")
    if dt4.shape != x4.shape or (z4 is not None and z4.shape != x4.shape):
        raise ValueError(f"{fn}: dt and z must be shaped like x {tuple(x.shape)}")
    if A4.shape != (nheads, dim, dstate):
        raise ValueError(f"{fn}: A must be ({dim}, {dstate}) or ({nheads}, {dim}, {dstate}), got {tuple(A.shape)}")
    ngroups = B4.shape[1]
    if B4.shape != (batch, ngroups, dstate) or C4.shape != B4.shape or nheads % ngroups != 0:
        raise ValueError(
            f"{fn}: B and C must be (batch, dstate) or (batch, ngroups, dstate) with nheads % ngroups == 0, "
            f"got {tuple(B.shape)} and {tuple(C.shape)}"
        )
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dt_ = dt4.to(acc)
    if bias4 is not None:
        dt_ = dt_ + bias4.to(acc)
    if dt_softplus:
        dt_ = F.softplus(dt_)
    rep = nheads // ngroups
    Bh = B4.to(acc).repeat_interleave(rep, dim=1)[:, :, None, :]  # (batch, nheads, 1, dstate)
    Ch = C4.to(acc).repeat_interleave(rep, dim=1)[:, :, None, :]
    dA = torch.exp(dt_[..., None] * A4.to(acc))
    new = rows.to(acc) * dA + (dt_ * x4.to(acc))[..., None] * Bh
    if state_batch_indices is None:
        st.copy_(new.to(state.dtype))
    else:
        st[state_batch_indices.long()] = new.to(state.dtype)
    out = (new * Ch).sum(-1)
    if D4 is not None:
        out = out + x4.to(acc) * D4.to(acc)
    if z4 is not None:
        out = out * F.silu(z4.to(acc))
    out = out.to(x.dtype)
    return out if has_heads else out.squeeze(1)


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """mamba_ssm's ``selective_state_update_ref``: :func:`selective_state_update` without batch indices."""
    return selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


_SSI = ("selective_scan_fn", "selective_scan_ref", "mamba_inner_fn", "mamba_inner_ref")
MODULES: dict[str, tuple[bool, tuple[str, ...]]] = {
    "mamba_ssm": (True, ("selective_scan_fn", "mamba_inner_fn", "Mamba")),
    "mamba_ssm.ops": (True, ()),
    "mamba_ssm.ops.selective_scan_interface": (False, _SSI),
    "mamba_ssm.ops.triton": (True, ()),
    "mamba_ssm.ops.triton.selective_state_update": (False, ("selective_state_update", "selective_state_update_ref")),
    "mamba_ssm.modules": (True, ()),
    "mamba_ssm.modules.mamba_simple": (False, ("Mamba",)),
    "mamba_ssm.utils": (True, ()),
    "mamba_ssm.utils.generation": (False, ("InferenceParams",)),
}
_NOT_SERVED = ("Mamba2", "Mamba3", "MambaLMHeadModel")


def _not_served(name: str):
    if name in _NOT_SERVED:
        raise AttributeError(
            f"mamba_ssm.{name} is not served by medkernels.compat (Mamba-1 only: Mamba, selective_scan_fn, "
            "mamba_inner_fn); install the real mamba_ssm for it"
        )
    raise AttributeError(f"module 'mamba_ssm' has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------
# The provider interface (medkernels.compat._finder).


has_module, is_package, create_module, build = TableProvider(
    MODULES, globals(), "mamba_ssm's", "mamba_ssm", VERSION, finish=lambda m: setattr(m, "__getattr__", _not_served)
).interface()
