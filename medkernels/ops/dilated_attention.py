"""D-Former's 3D group self-attention: the local scope (LS-MSA) and the global dilated scope (GS-MSA).

Wu et al., "D-Former: A U-shaped Dilated Transformer for 3D Medical Image Segmentation"
(arXiv 2201.00462). Tokens of a ``[B, D, H, W]`` grid are partitioned into groups per axis and
attend only within their group:

* ``scope="local"``: each axis is padded to a multiple of the group size g and cut into
  non-overlapping windows of g consecutive tokens.
* ``scope="global"``: after the same padding, with interval ``I = padded size / g``, the token at
  ``m * I + r`` belongs to group ``r`` (a dilated partition: every group spans the whole axis).

A group size larger than an axis is clamped to that axis. Padded keys never take part (on EVERY
axis: the official code's global-scope mask forgets depth padding, which this does not copy) and
padded queries do not exist, so the output has the input's shape. The official code pads, reshapes
and permutes the whole volume twice per block and runs dense matmuls; the kernels here index each
group in place instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._typing import Backend, Device, IntOrTuple, Tensor
from . import _library
from ._backend import Backends
from .checks import group_size3, softmax_scale

__all__ = ["dilated_attention3d", "dilated_attention3d_qkvpacked", "dilated_attention3d_ref", "dilated_groups"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_SCOPES = ("local", "global")


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check(fn, query, key, value, group_size, scope):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 6:
            raise ValueError(
                f"{fn}: {name} must be [batch, D, H, W, heads, head_dim] (6-D), got shape {tuple(t.shape)}"
            )
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{fn}: {name} must be float32, float16 or bfloat16 (or float64), got {t.dtype}")
    for name, t in (("key", key), ("value", value)):
        if t.device != query.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but query is on {query.device}")
        if t.dtype != query.dtype:
            raise ValueError(f"{fn}: {name} has dtype {t.dtype} but query has {query.dtype}")
        if t.shape != query.shape:
            raise ValueError(f"{fn}: {name} must have query's shape {tuple(query.shape)}, got {tuple(t.shape)}")
    if scope not in _SCOPES:
        raise ValueError(f"{fn}: scope must be 'local' or 'global', got {scope!r}")
    return group_size3(fn, group_size)


def dilated_groups(
    spatial: Sequence[int], group_size: IntOrTuple, scope: str, device: Device = None
) -> tuple[Tensor, Tensor]:
    """The groups of a ``spatial = (D, H, W)`` grid as token indices.

    Args:
        spatial: the grid size (D, H, W).
        group_size: int or (gD, gH, gW); each is clamped to its axis.
        scope: "local" or "global".
        device: where to build the tables.

    Returns:
        ``(index, valid)``, both ``[groups, gD * gH * gW]`` (clamped sizes): row-major token indices
        ``(d * H + h) * W + w`` of each group's members in row-major member order, and whether each
        member exists (False where it would sit in the padding; its index is then 0).
    """
    group = group_size3("dilated_groups", group_size)
    if scope not in _SCOPES:
        raise ValueError(f"dilated_groups: scope must be 'local' or 'global', got {scope!r}")
    coords, valids = [], []
    for n, g in zip(spatial, group):
        g = min(g, max(n, 1))
        ng = -(-n // g)  # groups along the axis; also the global interval
        grp = torch.arange(ng, device=device)[:, None]
        pos = torch.arange(g, device=device)[None, :]
        c = grp * g + pos if scope == "local" else grp + pos * ng  # [ng, g]
        coords.append(c)
        valids.append(c < n)
    (c0, c1, c2), (v0, v1, v2) = coords, valids
    _, H, W = spatial
    index = (c0[:, None, None, :, None, None] * H + c1[None, :, None, None, :, None]) * W + c2[
        None, None, :, None, None, :
    ]
    valid = v0[:, None, None, :, None, None] & v1[None, :, None, None, :, None] & v2[None, None, :, None, None, :]
    shape = (index.shape[0] * index.shape[1] * index.shape[2], -1)
    valid = valid.reshape(shape)
    return torch.where(valid, index.reshape(shape), 0), valid


def _reference(query, key, value, group, scope, scale, dropout_p=0.0):
    """Gathers every group by index and runs masked dense attention in float32 (float64), with dropout
    of probability ``dropout_p`` on the attention weights."""
    B, D, H, W, nh, d = query.shape
    acc = _acc(query)
    index, valid = dilated_groups((D, H, W), group, scope, query.device)
    q, k, v = (t.reshape(B, D * H * W, nh, d).to(acc)[:, index] for t in (query, key, value))  # [B, G, T, nh, d]
    logits = torch.einsum("bgqhd,bgkhd->bghqk", q * scale, k)
    logits = logits.masked_fill(~valid[None, :, None, None, :], float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # [B, G, nh, T]
    weights = torch.exp(logits - lse[..., None])
    if dropout_p > 0:
        weights = torch.nn.functional.dropout(weights, dropout_p)
    o = torch.einsum("bghqk,bgkhd->bgqhd", weights, v)
    rows = index[valid]
    out = o.new_zeros(B, D * H * W, nh, d)
    out[:, rows] = o[:, valid]  # every token is a member of exactly one group
    lse_out = lse.new_zeros(B, D * H * W, nh)
    lse_out[:, rows] = lse.transpose(2, 3)[:, valid]
    return out.reshape(query.shape).to(query.dtype), lse_out.reshape(query.shape[:-1])


def _fwd_fake(query, key, value, group_size, global_scope, scale):
    return (
        torch.empty_like(query, memory_format=torch.contiguous_format),
        query.new_empty(query.shape[:-1], dtype=_acc(query)),
    )


def _bwd_fake(grad_out, grad_lse, query, key, value, out, lse, group_size, global_scope, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (query, key, value))


def _setup(ctx, inputs, output):
    query, key, value, group_size, global_scope, scale = inputs
    ctx.save_for_backward(query, key, value, output[0], output[1])
    ctx.args = (group_size, global_scope, scale)


def _backward(ctx, bwd_op, grad_out, grad_lse):
    query, key, value, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = bwd_op(grad_out, grad_lse, query, key, value, out, lse, *ctx.args)
    return dq, dk, dv, None, None, None


def _packed_fwd_fake(qkv, group_size, global_scope, scale):
    q = qkv.select(4, 0)
    return _fwd_fake(q, q, q, group_size, global_scope, scale)


def _packed_bwd_fake(grad_out, grad_lse, qkv, out, lse, group_size, global_scope, scale):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _packed_setup(ctx, inputs, output):
    qkv, group_size, global_scope, scale = inputs
    ctx.save_for_backward(qkv, output[0], output[1])
    ctx.args = (group_size, global_scope, scale)


def _packed_backward(ctx, bwd_op, grad_out, grad_lse):
    qkv, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    return bwd_op(grad_out, grad_lse, qkv, out, lse, *ctx.args), None, None, None


if _library.HAS_TRITON:
    from typing import Optional

    from medkernels.triton import dilated_attention as _tda

    @torch.library.custom_op("medkernels::dilated_attention3d_fwd_triton", mutates_args=())
    def _fwd_triton(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        group_size: list[int],
        global_scope: bool,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = _tda.forward(query, key, value, group_size, global_scope, scale)
        return out.to(query.dtype), lse.to(_acc(query))

    @torch.library.custom_op("medkernels::dilated_attention3d_bwd_triton", mutates_args=())
    def _bwd_triton(
        grad_out: torch.Tensor,
        grad_lse: Optional[torch.Tensor],
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        group_size: list[int],
        global_scope: bool,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        drow = (grad_out.float() * out.float()).sum(-1)
        if grad_lse is not None:
            drow = drow - grad_lse.float()
        dq, dk, dv = _tda.backward(
            grad_out, query, key, value, lse.float().contiguous(), drow.contiguous(), group_size, global_scope, scale
        )
        return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype)

    @torch.library.custom_op("medkernels::dilated_attention3d_qkvpacked_fwd_triton", mutates_args=())
    def _packed_fwd_triton(
        qkv: torch.Tensor, group_size: list[int], global_scope: bool, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _fwd_triton(*qkv.unbind(4), group_size, global_scope, scale)

    @torch.library.custom_op("medkernels::dilated_attention3d_qkvpacked_bwd_triton", mutates_args=())
    def _packed_bwd_triton(
        grad_out: torch.Tensor,
        grad_lse: Optional[torch.Tensor],
        qkv: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        group_size: list[int],
        global_scope: bool,
        scale: float,
    ) -> torch.Tensor:
        grads = _bwd_triton(grad_out, grad_lse, *qkv.unbind(4), out, lse, group_size, global_scope, scale)
        return torch.stack(grads, 4)


_library.register_kernel(
    "dilated_attention3d",
    ("dilated_attention3d_fwd", "dilated_attention3d_bwd"),
    ("dilated_attention3d_fwd_triton", "dilated_attention3d_bwd_triton"),
    fwd_fake=_fwd_fake,
    bwd_fake=_bwd_fake,
    setup_context=_setup,
    backward=_backward,
)
_library.register_kernel(
    "dilated_attention3d_qkvpacked",
    ("dilated_attention3d_qkvpacked_fwd", "dilated_attention3d_qkvpacked_bwd"),
    ("dilated_attention3d_qkvpacked_fwd_triton", "dilated_attention3d_qkvpacked_bwd_triton"),
    fwd_fake=_packed_fwd_fake,
    bwd_fake=_packed_bwd_fake,
    setup_context=_packed_setup,
    backward=_packed_backward,
)


def _no_dropout(query, dropout_p=0.0):
    return "dropout on the attention weights runs on the reference backend only" if dropout_p > 0 else None


_TRITON_MAX_HEAD_DIM = 128  # medkernels.triton.dilated_attention.MAX_HEAD_DIM (that module needs triton)


def _triton_limits(query, dropout_p=0.0):
    if query.shape[-1] > _TRITON_MAX_HEAD_DIM:
        return f"the Triton kernels support head_dim up to {_TRITON_MAX_HEAD_DIM}, got {query.shape[-1]}"
    return _no_dropout(query, dropout_p)


BACKENDS = Backends(
    "dilated_attention3d",
    cpu="dilated_attention3d_fwd",
    triton="dilated_attention3d_fwd_triton",
    limits={"cpu": _no_dropout, "triton": _triton_limits},
)


def _check_dropout(fn: str, dropout_p) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{fn}: dropout_p must be a float in [0, 1), got {dropout_p!r}")
    return float(dropout_p)


def dilated_attention3d(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    group_size: IntOrTuple,
    scope: str,
    scale: float | Tensor | None = None,
    *,
    return_lse: bool = False,
    dropout_p: float = 0.0,
    backend: Backend = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """D-Former group self-attention over a 3D token grid (local or global dilated scope).

    Args:
        query: ``[B, D, H, W, heads, head_dim]`` (heads last, as natten), float32/float16/bfloat16
            (float64 for gradcheck). Read in place through its strides (e.g. views of one qkv tensor).
        key: same shape, dtype and device as query.
        value: same shape, dtype and device as query.
        group_size: int or ``(gD, gH, gW)``, each >= 1; clamped to the axis when larger.
        scope: ``"local"`` (non-overlapping windows of group_size tokens) or ``"global"`` (the dilated
            partition: the token at ``m * I + r`` is in group r, ``I = padded size / group size``).
        scale: softmax scale, default ``head_dim ** -0.5``.
        return_lse: also return the logsumexp ``[B, D, H, W, heads]`` (float32; float64 for float64).
        dropout_p: dropout on the attention weights (as SDPA's; D-Former's ``attn_drop`` in training). The
            fused kernels have none: above 0 the reference runs (the automatic choice warns once).
        backend: None/"auto", "cuda", "triton", "cpu" or "reference" (see medkernels.ops.choose_backend).

    Returns:
        ``[B, D, H, W, heads, head_dim]`` in the input dtype (contiguous), or ``(out, lse)``.
        Differentiable in query, key and value (also through lse).

    Raises:
        TypeError / ValueError: non-tensors, wrong rank, dtype, device or shape mismatches, a bad
            group_size, scope, scale or dropout_p.
    """
    return _attend(
        "dilated_attention3d", (query, key, value), None, group_size, scope, scale, return_lse, dropout_p, backend
    )


def _attend(fn, qkv_views, packed, group_size, scope, scale, return_lse, dropout_p, backend):
    """Checks, backend choice and the call, for both entry points: ``qkv_views`` = (query, key, value);
    ``packed`` = the packed qkv tensor they are views of (its ops then run), or None."""
    query, key, value = qkv_views
    group = _check(fn, query, key, value, group_size, scope)
    scale = softmax_scale(fn, scale, query.shape[-1])
    dropout_p = _check_dropout(fn, dropout_p)
    name = BACKENDS.choose(backend, query, dropout_p)
    if name == "reference":
        return dilated_attention3d_ref(
            query, key, value, group, scope, scale, return_lse=return_lse, dropout_p=dropout_p
        )
    ops = torch.ops.medkernels
    args = (list(group), scope == "global", scale)
    if packed is None:
        op = ops.dilated_attention3d_fwd_triton if name == "triton" else ops.dilated_attention3d_fwd
        out, lse = op(query, key, value, *args)
    else:
        op = ops.dilated_attention3d_qkvpacked_fwd_triton if name == "triton" else ops.dilated_attention3d_qkvpacked_fwd
        out, lse = op(packed, *args)
    return (out, lse) if return_lse else out


def _check_packed(fn: str, qkv) -> None:
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"{fn}: qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dim() != 7 or qkv.shape[4] != 3:
        raise ValueError(
            f"{fn}: qkv must be [batch, D, H, W, 3, heads, head_dim] (7-D, q/k/v on dim 4), got shape "
            f"{tuple(qkv.shape)}"
        )


def dilated_attention3d_qkvpacked(
    qkv: Tensor,
    group_size: IntOrTuple,
    scope: str,
    scale: float | Tensor | None = None,
    *,
    return_lse: bool = False,
    dropout_p: float = 0.0,
    backend: Backend = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`dilated_attention3d` on one packed qkv tensor (as flash-attn's ``*_qkvpacked_func``).

    The same result as ``dilated_attention3d(*qkv.unbind(4), ...)``; the difference is the backward: the
    fused kernels write the query, key and value gradients straight into one packed gradient of qkv, where
    autograd through ``unbind`` would assemble it from three separate gradients with a copy. Use it on
    the output of a qkv projection (D-Former's ``Attention``: ``qkv(x).reshape(B, D, H, W, 3, heads, dim)``).

    Args:
        qkv: ``[B, D, H, W, 3, heads, head_dim]``: query, key and value stacked on dim 4; read in place
            through its strides. Dtypes as :func:`dilated_attention3d`.
        group_size, scope, scale, return_lse, dropout_p, backend: as :func:`dilated_attention3d`.

    Returns:
        ``[B, D, H, W, heads, head_dim]`` in qkv's dtype (contiguous), or ``(out, lse)``. Differentiable in
        qkv; on the fused backends its gradient is one contiguous ``[B, D, H, W, 3, heads, head_dim]`` tensor.

    Raises:
        TypeError / ValueError: as :func:`dilated_attention3d`, and qkv not 7-D with 3 on dim 4.
    """
    fn = "dilated_attention3d_qkvpacked"
    _check_packed(fn, qkv)
    return _attend(fn, qkv.unbind(4), qkv, group_size, scope, scale, return_lse, dropout_p, backend)


def dilated_attention3d_ref(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    group_size: IntOrTuple,
    scope: str,
    scale: float | Tensor | None = None,
    *,
    return_lse: bool = False,
    dropout_p: float = 0.0,
) -> Tensor | tuple[Tensor, Tensor]:
    """Pure-PyTorch :func:`dilated_attention3d` (the oracle): gathers every group by index
    (:func:`dilated_groups`) and runs masked dense softmax attention in float32 (float64 for float64).
    Arguments and returns as :func:`dilated_attention3d`."""
    fn = "dilated_attention3d_ref"
    group = _check(fn, query, key, value, group_size, scope)
    out, lse = _reference(
        query, key, value, group, scope, softmax_scale(fn, scale, query.shape[-1]), _check_dropout(fn, dropout_p)
    )
    return (out, lse) if return_lse else out
