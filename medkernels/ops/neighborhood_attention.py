"""(Dilated) neighborhood attention in 1D, 2D and 3D.

Hassani et al., "Neighborhood Attention Transformer" (CVPR 2023, arXiv 2204.07143); Hassani & Shi,
"Dilated Neighborhood Attention Transformer" (arXiv 2209.15001); generalized NA with stride
(arXiv 2504.16922). Each query attends to the keys of a window around it, per axis: kernel size K,
stride s, dilation d and causality independently; the window shifts at the borders so that every
query sees K keys per axis (natten's semantics exactly, see ``_axis_windows``).

Fused API (natten 0.21): ``na1d/na2d/na3d(query, key, value, kernel_size, stride=1, dilation=1,
is_causal=False, scale=None, additional_keys=None, additional_values=None, *, rpb=None,
return_lse=False, backend=None)`` on heads-last tensors ``[B, *spatial, H, D]``, with GQA, a value
head dim that may differ, and beyond natten: relative positional bias ``rpb`` (natten 0.17's
``[H, 2K-1, ...]``) forward and backward, and CPU kernels for training.

Unfused API (natten 0.17, heads-first ``[B, H, *spatial, D]``): ``na{1,2,3}d_qk`` returns the
attention logits ``[B, H, *spatial, prod(kernel_size)]`` (window slots row-major, -inf where a causal
window is shorter), ``na{1,2,3}d_av`` applies attention weights to values.
"""

from __future__ import annotations

import math

import torch

from .._typing import Backend, BoolOrTuple, IntOrTuple, OptTensor, Tensor
from . import _library
from ._backend import Backends
from .checks import na_causal, na_dims, softmax_scale

__all__ = [
    "na1d",
    "na2d",
    "na3d",
    "na1d_ref",
    "na2d_ref",
    "na3d_ref",
    "na1d_qk",
    "na2d_qk",
    "na3d_qk",
    "na1d_av",
    "na2d_av",
    "na3d_av",
    "na1d_qk_ref",
    "na2d_qk_ref",
    "na3d_qk_ref",
    "na1d_av_ref",
    "na2d_av_ref",
    "na3d_av_ref",
]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ---------------------------------------------------------------------------------------------
# Arguments: natten's rules and messages.


def _check_args_against_input(fn: str, spatial, kernel, stride, dilation) -> None:
    if any(k * d > x for x, k, d in zip(spatial, kernel, dilation)):
        raise ValueError(
            f"{fn}: The product of kernel size and dilation cannot be larger than input size along "
            f"any dimension, got input_size={tuple(spatial)}, kernel_size={kernel}, dilation={dilation}."
        )
    if any(s > k for k, s in zip(kernel, stride)):
        raise ValueError(
            f"{fn}: Stride cannot be larger than kernel size along any dimension, got "
            f"kernel_size={kernel}, stride={stride}."
        )


def _check_tensor(fn: str, name: str, t, rank: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{fn}: {name} must be a {rank}-D tensor {layout}, got shape {tuple(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{fn}: {name} must be float32, float16 or bfloat16 (or float64), got {t.dtype}")


def _check_fused(fn, na_dim, query, key, value, additional_keys, additional_values):
    layout = "[batch, " + ", ".join(f"X{i}" for i in range(na_dim)) + ", heads, head_dim]"
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check_tensor(fn, name, t, na_dim + 3, layout)
    if query.device != key.device or query.device != value.device:
        raise ValueError(
            f"{fn}: Query, key, and value must be on the same device, got {query.device=}, "
            f"{key.device=}, {value.device=}."
        )
    if query.dtype != key.dtype or query.dtype != value.dtype:
        raise ValueError(
            f"{fn}: Query, key, and value must assume the same data type, got {query.dtype=}, "
            f"{key.dtype=}, {value.dtype=}."
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"{fn}: Q and K head dims must match, got {query.shape[-1]=}, {key.shape[-1]=}.")
    if query.shape[0] != key.shape[0] or query.shape[0] != value.shape[0]:
        raise ValueError(
            f"{fn}: Q, K, and V must match in batch size, got {query.shape[0]=}, {key.shape[0]=}, {value.shape[0]=}."
        )
    sp = slice(1, na_dim + 1)
    if query.shape[sp] != key.shape[sp] or query.shape[sp] != value.shape[sp]:
        raise ValueError(
            f"{fn}: Q, K, and V must match in their spatial dims, got {tuple(query.shape[sp])}, "
            f"{tuple(key.shape[sp])}, {tuple(value.shape[sp])}."
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"{fn}: Key and value must always have the same number of heads, got {key.shape[-2]=}, {value.shape[-2]=}."
        )
    heads_q, heads_kv = query.shape[-2], key.shape[-2]
    if heads_kv < 1 or heads_q < heads_kv or heads_q % heads_kv != 0:
        raise ValueError(f"{fn}: Key/value heads must evenly divide query heads, got {heads_q=}, {heads_kv=}.")
    if (additional_keys is None) != (additional_values is None):
        raise ValueError(f"{fn}: `additional_keys` and `additional_values` must be either both Tensors or None.")
    if additional_keys is not None:
        for name, t, ref in (
            ("additional_keys", additional_keys, key),
            ("additional_values", additional_values, value),
        ):
            _check_tensor(fn, name, t, 4, "[batch, tokens, kv_heads, head_dim]")
            if t.device != query.device or t.dtype != query.dtype:
                raise ValueError(f"{fn}: {name} must match query in device and dtype, got {t.device}, {t.dtype}")
            if t.shape[0] != query.shape[0] or t.shape[2] != ref.shape[-2] or t.shape[3] != ref.shape[-1]:
                raise ValueError(
                    f"{fn}: {name} must be [batch, tokens, kv_heads, head_dim] matching the "
                    f"{'key' if ref is key else 'value'} tensor, got {tuple(t.shape)}"
                )
        if additional_keys.shape[1] != additional_values.shape[1]:
            raise ValueError(
                f"{fn}: Additional K and V must match in sequence length, got "
                f"{additional_keys.shape[1]=}, {additional_values.shape[1]=}."
            )


def _check_rpb(fn, rpb, heads, kernel, like):
    if rpb is None:
        return
    if not isinstance(rpb, torch.Tensor):
        raise TypeError(f"{fn}: rpb must be a torch.Tensor, got {type(rpb).__name__}")
    want = (heads, *(2 * k - 1 for k in kernel))
    if tuple(rpb.shape) != want:
        raise ValueError(
            f"{fn}: rpb must have shape (heads, 2*kernel_size-1 per axis) = {want}, got {tuple(rpb.shape)}"
        )
    if rpb.dtype not in _FLOAT_DTYPES or rpb.device != like.device:
        raise ValueError(f"{fn}: rpb must be a floating tensor on {like.device}, got {rpb.dtype} on {rpb.device}")


# ---------------------------------------------------------------------------------------------
# Window tables (natten's per-axis rules), in torch: the reference and the Triton path use them.


def _axis_windows(L: int, K: int, s: int, d: int, causal: bool, device=None):
    """Per query coordinate: the first key coordinate, the key count, and the bias index of key 0."""
    x = torch.arange(L, device=device)
    g, i = x % d, x // d
    Lg = L // d + (g < L % d).long()
    if not causal:
        leader = torch.minimum((i // s) * s + s // 2, Lg - 1)
        start = torch.minimum((leader - K // 2).clamp(min=0), Lg - K)
        count = torch.full_like(x, K)
    else:
        leader = torch.minimum((i // s) * s + s - 1, Lg - 1)
        start = (leader - (K - 1)).clamp(min=0)
        count = torch.minimum(i + 1, Lg) - start
    return start * d + g, count, K - 1 + start - i


def _window_index(spatial, kernel, stride, dilation, causal, device=None):
    """keys [N, prod(K)] token indices (clamped where invalid), valid [N, prod(K)], rel [N, prod(K)]
    flat bias indices; window slots row-major, tokens row-major."""
    keys = valid = rel = None
    for L, K, s, d, c in zip(spatial, kernel, stride, dilation, causal):
        start, count, base = _axis_windows(L, K, s, d, c, device)
        m = torch.arange(K, device=device)
        ax_key = (start[:, None] + m[None] * d).clamp(max=L - 1)  # [L, K]
        ax_ok = m[None] < count[:, None]
        ax_rel = (base[:, None] + m[None]).clamp(min=0, max=2 * K - 2)
        if keys is None:
            keys, valid, rel = ax_key, ax_ok, ax_rel
            continue
        # combine: new token index = old * L + this axis; slot-major order row-major
        keys = (keys[:, None, :, None] * L + ax_key[None, :, None, :]).flatten(0, 1).flatten(1, 2)
        valid = (valid[:, None, :, None] & ax_ok[None, :, None, :]).flatten(0, 1).flatten(1, 2)
        rel = (rel[:, None, :, None] * (2 * K - 1) + ax_rel[None, :, None, :]).flatten(0, 1).flatten(1, 2)
    return keys, valid, rel


# ---------------------------------------------------------------------------------------------
# References: each query gathers its window's keys by index (the "gather baseline").


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _na_fused_ref(query, key, value, kernel, stride, dilation, causal, scale, rpb, additional_keys, additional_values):
    na_dim = len(kernel)
    spatial = tuple(query.shape[1 : 1 + na_dim])
    B, H, Hk = query.shape[0], query.shape[-2], key.shape[-2]
    acc = _acc(query)
    keys, valid, rel = _window_index(spatial, kernel, stride, dilation, causal, query.device)
    N = math.prod(spatial)  # explicit sizes: -1 is ambiguous for an empty batch
    q = query.reshape(B, N, H, query.shape[-1]).to(acc)
    k = key.reshape(B, N, Hk, key.shape[-1]).to(acc).repeat_interleave(H // Hk, dim=2)
    v = value.reshape(B, N, Hk, value.shape[-1]).to(acc).repeat_interleave(H // Hk, dim=2)
    kg, vg = k[:, keys], v[:, keys]  # [B, N, slots, H, D]
    logits = torch.einsum("bnhd,bnkhd->bnhk", q, kg) * scale
    if rpb is not None:
        logits = logits + rpb.to(acc).reshape(H, -1)[:, rel].permute(1, 0, 2)
    logits = logits.masked_fill(~valid[None, :, None, :], float("-inf"))
    if additional_keys is not None:
        ak = additional_keys.to(acc).repeat_interleave(H // Hk, dim=2)
        av = additional_values.to(acc).repeat_interleave(H // Hk, dim=2)
        logits = torch.cat([logits, torch.einsum("bnhd,bahd->bnha", q, ak) * scale], dim=-1)
    lse = torch.logsumexp(logits, dim=-1)
    attn = torch.softmax(logits, dim=-1)
    n_win = keys.shape[1]
    out = torch.einsum("bnhk,bnkhd->bnhd", attn[..., :n_win], vg)
    if additional_keys is not None:
        out = out + torch.einsum("bnha,bahd->bnhd", attn[..., n_win:], av)
    out = out.reshape(*query.shape[:-1], value.shape[-1]).to(query.dtype)
    return out, lse.reshape(query.shape[:-1])


def _qk_ref(query, key, kernel, dilation, causal, rpb):
    na_dim = len(kernel)
    spatial = tuple(query.shape[2 : 2 + na_dim])
    B, H, Hk = query.shape[0], query.shape[1], key.shape[1]
    acc = _acc(query)
    keys, valid, rel = _window_index(spatial, kernel, (1,) * na_dim, dilation, causal, query.device)
    N = math.prod(spatial)
    q = query.reshape(B, H, N, query.shape[-1]).to(acc)
    k = key.reshape(B, Hk, N, key.shape[-1]).to(acc).repeat_interleave(H // Hk, dim=1)
    attn = torch.einsum("bhnd,bhnkd->bhnk", q, k[:, :, keys])
    if rpb is not None:
        attn = attn + rpb.to(acc).reshape(H, -1)[:, rel]
    attn = attn.masked_fill(~valid, float("-inf"))
    return attn.reshape(*query.shape[:-1], keys.shape[1]).to(query.dtype)


def _av_ref(attn, value, kernel, dilation, causal):
    na_dim = len(kernel)
    spatial = tuple(attn.shape[2 : 2 + na_dim])
    B, H, Hk = attn.shape[0], attn.shape[1], value.shape[1]
    acc = _acc(value)
    keys, valid, _ = _window_index(spatial, kernel, (1,) * na_dim, dilation, causal, value.device)
    N = math.prod(spatial)
    a = attn.reshape(B, H, N, keys.shape[1]).to(acc).masked_fill(~valid, 0.0)
    v = value.reshape(B, Hk, N, value.shape[-1]).to(acc).repeat_interleave(H // Hk, dim=1)
    out = torch.einsum("bhnk,bhnkd->bhnd", a, v[:, :, keys])
    return out.reshape(*attn.shape[:-1], value.shape[-1]).to(value.dtype)


# ---------------------------------------------------------------------------------------------
# The compiled ops (C++ medkernels::na_*, Triton medkernels::na_*_triton): fakes and autograd.


def _na_fwd_fake(query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, ak, av):
    return (query.new_empty((*query.shape[:-1], value.shape[-1])), query.new_empty(query.shape[:-1], dtype=_acc(query)))


def _na_bwd_fake(
    grad_out, grad_lse, query, key, value, out, lse, kernel_size, stride, dilation, is_causal, scale, rpb, ak, av
):
    def like(t):
        if t is None:
            return query.new_empty((0,), dtype=_acc(query))
        return torch.empty_like(t, memory_format=torch.contiguous_format)

    return like(query), like(key), like(value), like(rpb), like(ak), like(av)


def _na_fwd_setup(ctx, inputs, output):
    query, key, value, kernel_size, stride, dilation, is_causal, scale, rpb, ak, av = inputs
    ctx.save_for_backward(query, key, value, output[0], output[1], rpb, ak, av)
    ctx.args = (kernel_size, stride, dilation, is_causal, scale)


def _na_fwd_backward(ctx, bwd_op, grad_out, grad_lse):
    query, key, value, out, lse, rpb, ak, av = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, drpb, dak, dav = bwd_op(grad_out, grad_lse, query, key, value, out, lse, *ctx.args, rpb, ak, av)
    return (
        dq,
        dk,
        dv,
        None,
        None,
        None,
        None,
        None,
        drpb if rpb is not None else None,
        dak if ak is not None else None,
        dav if av is not None else None,
    )


def _na_qk_fake(query, key, kernel_size, dilation, is_causal, rpb):
    return query.new_empty((*query.shape[:-1], math.prod(kernel_size)))


def _na_qk_bwd_fake(grad_attn, query, key, kernel_size, dilation, is_causal, rpb):
    return (
        torch.empty_like(query, memory_format=torch.contiguous_format),
        torch.empty_like(key, memory_format=torch.contiguous_format),
        query.new_empty((0,), dtype=_acc(query)) if rpb is None else torch.empty_like(rpb),
    )


def _na_qk_setup(ctx, inputs, output):
    query, key, kernel_size, dilation, is_causal, rpb = inputs
    ctx.save_for_backward(query, key, rpb)
    ctx.args = (kernel_size, dilation, is_causal)


def _na_qk_backward(ctx, bwd_op, grad_attn):
    query, key, rpb = ctx.saved_tensors
    dq, dk, drpb = bwd_op(grad_attn, query, key, *ctx.args, rpb)
    return dq, dk, None, None, None, drpb if rpb is not None else None


def _na_av_fake(attn, value, kernel_size, dilation, is_causal):
    return value.new_empty((*attn.shape[:-1], value.shape[-1]))


def _na_av_bwd_fake(grad_out, attn, value, kernel_size, dilation, is_causal):
    return (
        torch.empty_like(attn, memory_format=torch.contiguous_format),
        torch.empty_like(value, memory_format=torch.contiguous_format),
    )


def _na_av_setup(ctx, inputs, output):
    attn, value, kernel_size, dilation, is_causal = inputs
    ctx.save_for_backward(attn, value)
    ctx.args = (kernel_size, dilation, is_causal)


def _na_av_backward(ctx, bwd_op, grad_out):
    attn, value = ctx.saved_tensors
    dattn, dv = bwd_op(grad_out, attn, value, *ctx.args)
    return dattn, dv, None, None, None


_library.register_kernel(
    "na1d_qk/na2d_qk/na3d_qk",
    ("na_qk", "na_qk_bwd"),
    fwd_fake=_na_qk_fake,
    bwd_fake=_na_qk_bwd_fake,
    setup_context=_na_qk_setup,
    backward=_na_qk_backward,
)
_library.register_kernel(
    "na1d_av/na2d_av/na3d_av",
    ("na_av", "na_av_bwd"),
    fwd_fake=_na_av_fake,
    bwd_fake=_na_av_bwd_fake,
    setup_context=_na_av_setup,
    backward=_na_av_backward,
)


def _inverse_index(keys: torch.Tensor, valid: torch.Tensor):
    """Per key token: the queries whose window holds it and its slot there, padded to the largest
    count (deterministic: sorted by key then query)."""
    N, KP = keys.shape
    qq = torch.arange(N, device=keys.device)[:, None].expand(N, KP)[valid]
    ss = torch.arange(KP, device=keys.device)[None, :].expand(N, KP)[valid]
    kk = keys[valid]
    order = torch.argsort(kk * N + qq)
    kk, qq, ss = kk[order], qq[order], ss[order]
    counts = torch.bincount(kk, minlength=N)
    imax = max(int(counts.max()), 1)
    pos = torch.arange(kk.numel(), device=keys.device) - (torch.cumsum(counts, 0) - counts)[kk]
    inv_q = torch.zeros(N, imax, dtype=torch.int32, device=keys.device)
    inv_s = torch.zeros(N, imax, dtype=torch.int32, device=keys.device)
    inv_valid = torch.zeros(N, imax, dtype=torch.int8, device=keys.device)
    inv_q[kk, pos] = qq.int()
    inv_s[kk, pos] = ss.int()
    inv_valid[kk, pos] = 1
    return inv_q, inv_s, inv_valid


if _library.HAS_TRITON:
    from typing import Optional

    from medkernels.triton import neighborhood_attention as _tna

    def _triton_canon(t, batch, heads):  # [B, *spatial, heads, d] -> float32 [B*heads, tokens, d]
        return (
            t.reshape(batch, -1, heads, t.shape[-1])
            .permute(0, 2, 1, 3)
            .reshape(batch * heads, -1, t.shape[-1])
            .float()
            .contiguous()
        )

    def _triton_tables(query, kernel_size, stride, dilation, is_causal):
        spatial = tuple(query.shape[1 : 1 + len(kernel_size)])
        keys, valid, rel = _window_index(spatial, kernel_size, stride, dilation, is_causal, query.device)
        return keys.int().contiguous(), valid.to(torch.int8).contiguous(), rel.int().contiguous()

    def _triton_back(t, like, heads, dtype):  # [B*heads, tokens, d] -> [B, *spatial, heads, d]
        batch = like.shape[0]
        return (
            t.reshape(batch, heads, -1, t.shape[-1])
            .permute(0, 2, 1, 3)
            .reshape(*like.shape[:-2], heads, t.shape[-1])
            .to(dtype)
            .contiguous()
        )

    @torch.library.custom_op("medkernels::na_fwd_triton", mutates_args=())
    def _na_fwd_triton(
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kernel_size: list[int],
        stride: list[int],
        dilation: list[int],
        is_causal: list[bool],
        scale: float,
        rpb: Optional[torch.Tensor],
        additional_keys: Optional[torch.Tensor],
        additional_values: Optional[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, Hk = query.shape[0], query.shape[-2], key.shape[-2]
        keys, valid, rel = _triton_tables(query, kernel_size, stride, dilation, is_causal)
        ak = None if additional_keys is None else _triton_canon(additional_keys, B, Hk)
        av = None if additional_values is None else _triton_canon(additional_values, B, Hk)
        out, lse = _tna.forward(
            _triton_canon(query, B, H) * scale,
            _triton_canon(key, B, Hk),
            _triton_canon(value, B, Hk),
            keys,
            valid,
            rel,
            None if rpb is None else rpb.float().reshape(H, -1).contiguous(),
            ak,
            av,
            H,
            Hk,
        )
        lse = lse.reshape(B, H, -1).permute(0, 2, 1).reshape(query.shape[:-1]).to(_acc(query))
        return _triton_back(out, query, H, query.dtype), lse.contiguous()

    @torch.library.custom_op("medkernels::na_bwd_triton", mutates_args=())
    def _na_bwd_triton(
        grad_out: torch.Tensor,
        grad_lse: Optional[torch.Tensor],
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        kernel_size: list[int],
        stride: list[int],
        dilation: list[int],
        is_causal: list[bool],
        scale: float,
        rpb: Optional[torch.Tensor],
        additional_keys: Optional[torch.Tensor],
        additional_values: Optional[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        B, H, Hk = query.shape[0], query.shape[-2], key.shape[-2]
        keys, valid, rel = _triton_tables(query, kernel_size, stride, dilation, is_causal)
        inv_q, inv_s, inv_valid = _inverse_index(keys.long(), valid.bool())
        do = _triton_canon(grad_out, B, H)
        drow = (do * _triton_canon(out, B, H)).sum(-1)
        lse_c = lse.float().reshape(B, -1, H).permute(0, 2, 1).reshape(B * H, -1).contiguous()
        if grad_lse is not None:
            drow = drow - grad_lse.float().reshape(B, -1, H).permute(0, 2, 1).reshape(B * H, -1)
        ak = None if additional_keys is None else _triton_canon(additional_keys, B, Hk)
        av = None if additional_values is None else _triton_canon(additional_values, B, Hk)
        rpb_c = None if rpb is None else rpb.float().reshape(H, -1).contiguous()
        dq, dk, dv, ds, dak, dav = _tna.backward(
            _triton_canon(query, B, H) * scale,
            _triton_canon(key, B, Hk),
            _triton_canon(value, B, Hk),
            do,
            lse_c,
            drow.contiguous(),
            keys,
            valid,
            rel,
            inv_q,
            inv_s,
            inv_valid,
            rpb_c,
            ak,
            av,
            scale,
            H,
            Hk,
        )
        empty = query.new_empty((0,), dtype=_acc(query))
        drpb = empty
        if rpb is not None:
            per_head = ds.reshape(B, H, -1).sum(0)  # (H, tokens * slots)
            drpb = per_head.new_zeros(H, rpb_c.shape[1]).index_add_(1, rel.reshape(-1).long(), per_head)
            drpb = drpb.reshape(rpb.shape).to(rpb.dtype)
        dak_out, dav_out = empty.clone(), empty.clone()
        if ak is not None:
            n_add = ak.shape[1]
            dak_out = (
                dak.reshape(B, Hk, H // Hk, -1, n_add, ak.shape[-1])
                .sum((2, 3))
                .permute(0, 2, 1, 3)
                .to(additional_keys.dtype)
                .contiguous()
            )
            dav_out = (
                dav.reshape(B, Hk, H // Hk, -1, n_add, av.shape[-1])
                .sum((2, 3))
                .permute(0, 2, 1, 3)
                .to(additional_values.dtype)
                .contiguous()
            )
        return (
            _triton_back(dq, query, H, query.dtype),
            _triton_back(dk, key, Hk, key.dtype),
            _triton_back(dv, value, Hk, value.dtype),
            drpb,
            dak_out,
            dav_out,
        )


_library.register_kernel(
    "na1d/na2d/na3d",
    ("na_fwd", "na_bwd"),
    ("na_fwd_triton", "na_bwd_triton"),
    fwd_fake=_na_fwd_fake,
    bwd_fake=_na_bwd_fake,
    setup_context=_na_fwd_setup,
    backward=_na_fwd_backward,
)

# One declaration per public function (the fused ones share their kernels; so do the unfused pair's).
_TRITON_MAX_HEAD_DIM = 256  # medkernels.triton.neighborhood_attention.MAX_HEAD_DIM (that module needs triton)


def _triton_head_dims(query, value=None, *rest) -> str | None:
    dim = max(query.shape[-1], 0 if value is None else value.shape[-1])
    if dim > _TRITON_MAX_HEAD_DIM:
        return f"the Triton kernels support head dims up to {_TRITON_MAX_HEAD_DIM}, got {dim}"
    return None


FUSED_BACKENDS = {
    f"na{n}d": Backends(f"na{n}d", cpu="na_fwd", triton="na_fwd_triton", limits={"triton": _triton_head_dims})
    for n in (1, 2, 3)
}
QK_BACKENDS = {f"na{n}d_qk": Backends(f"na{n}d_qk", cpu="na_qk") for n in (1, 2, 3)}
AV_BACKENDS = {f"na{n}d_av": Backends(f"na{n}d_av", cpu="na_av") for n in (1, 2, 3)}


# ---------------------------------------------------------------------------------------------
# Public functions.


def _normalize(fn, na_dim, spatial, kernel_size, stride, dilation, is_causal):
    kernel = na_dims("kernel_size", kernel_size, na_dim, 2, "all >= 2")
    stride = na_dims("stride", stride, na_dim, 1, "all positive")
    dilation = na_dims("dilation", dilation, na_dim, 1, "all positive")
    causal = na_causal(is_causal, na_dim)
    _check_args_against_input(fn, spatial, kernel, stride, dilation)
    return kernel, stride, dilation, causal


def _na_args(
    na_dim,
    fn,
    query,
    key,
    value,
    kernel_size,
    stride,
    dilation,
    is_causal,
    scale,
    additional_keys,
    additional_values,
    rpb,
):
    """Checks a fused call's arguments: (kernel, stride, dilation, causal, scale) normalised."""
    _check_fused(fn, na_dim, query, key, value, additional_keys, additional_values)
    kernel, stride, dilation, causal = _normalize(
        fn, na_dim, query.shape[1 : 1 + na_dim], kernel_size, stride, dilation, is_causal
    )
    _check_rpb(fn, rpb, query.shape[-2], kernel, query)
    return kernel, stride, dilation, causal, softmax_scale(fn, scale, query.shape[-1])


def _na_doc(na_dim: int) -> str:
    sp = ", ".join(f"X{i}" for i in range(na_dim))
    return f"""{na_dim}-D neighborhood attention (natten 0.21's ``na{na_dim}d``).

    Args:
        query: ``[B, {sp}, H, D]`` (heads last), float32/float16/bfloat16 (float64 for gradcheck).
        key: ``[B, {sp}, H_kv, D]``; H % H_kv == 0 (GQA/MQA).
        value: ``[B, {sp}, H_kv, Dv]``; Dv may differ from D.
        kernel_size: window size per axis, int or tuple of {na_dim}, each >= 2; kernel * dilation <= size.
        stride: queries per window leader, int or tuple, 1 <= stride <= kernel_size.
        dilation: int or tuple, >= 1 (need not divide the size).
        is_causal: bool or tuple of {na_dim} bools, per axis.
        scale: softmax scale, default ``D ** -0.5``.
        additional_keys: ``[B, N_add, H_kv, D]`` keys every query also attends to (never causal).
        additional_values: ``[B, N_add, H_kv, Dv]``, with additional_keys.
        rpb: relative positional bias ``[H, {", ".join(["2K-1"] * na_dim)}]`` (natten 0.17), added to the logits;
            differentiable.
        return_lse: also return the logsumexp ``[B, {sp}, H]`` (float32; float64 for float64 inputs).
        backend: None/"auto", "cuda", "triton", "cpu" or "reference" (see medkernels.ops.choose_backend).

    Returns:
        ``[B, {sp}, H, Dv]`` in the input dtype, or ``(out, lse)`` with ``return_lse``.

    Raises:
        ValueError / TypeError: natten's argument rules, plus rank, dtype, device and GQA mismatches.
    """


def _make_fused(na_dim: int):
    fn_name = f"na{na_dim}d"

    def na(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        scale: float | Tensor | None = None,
        additional_keys: OptTensor = None,
        additional_values: OptTensor = None,
        *,
        rpb: OptTensor = None,
        return_lse: bool = False,
        backend: Backend = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        args = _na_args(
            na_dim,
            fn_name,
            query,
            key,
            value,
            kernel_size,
            stride,
            dilation,
            is_causal,
            scale,
            additional_keys,
            additional_values,
            rpb,
        )
        name = FUSED_BACKENDS[fn_name].choose(backend, query, value)
        if name == "reference":
            return na_ref(
                query,
                key,
                value,
                kernel_size,
                stride,
                dilation,
                is_causal,
                scale,
                additional_keys,
                additional_values,
                rpb=rpb,
                return_lse=return_lse,
            )
        kernel, stride_, dilation_, causal, scale_ = args
        op = torch.ops.medkernels.na_fwd_triton if name == "triton" else torch.ops.medkernels.na_fwd
        out, lse = op(
            query,
            key,
            value,
            list(kernel),
            list(stride_),
            list(dilation_),
            list(causal),
            scale_,
            rpb,
            additional_keys,
            additional_values,
        )
        return (out, lse) if return_lse else out

    def na_ref(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        scale: float | Tensor | None = None,
        additional_keys: OptTensor = None,
        additional_values: OptTensor = None,
        *,
        rpb: OptTensor = None,
        return_lse: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        args = _na_args(
            na_dim,
            f"{fn_name}_ref",
            query,
            key,
            value,
            kernel_size,
            stride,
            dilation,
            is_causal,
            scale,
            additional_keys,
            additional_values,
            rpb,
        )
        out, lse = _na_fused_ref(query, key, value, *args, rpb, additional_keys, additional_values)
        return (out, lse) if return_lse else out

    na.__name__ = na.__qualname__ = fn_name
    na.__doc__ = _na_doc(na_dim)
    na_ref.__name__ = na_ref.__qualname__ = f"{fn_name}_ref"
    na_ref.__doc__ = (
        f"Pure-PyTorch ``{fn_name}``: every query gathers its window's keys by index. The oracle "
        f"and the reference backend; arguments as :func:`{fn_name}`."
    )
    return na, na_ref


def _check_unfused(fn, na_dim, a, a_name, b, b_name):
    layout = "[batch, heads, " + ", ".join(f"X{i}" for i in range(na_dim)) + ", dim]"
    _check_tensor(fn, a_name, a, na_dim + 3, layout)
    _check_tensor(fn, b_name, b, na_dim + 3, layout)
    if a.device != b.device or a.dtype != b.dtype:
        raise ValueError(
            f"{fn}: {a_name} and {b_name} must share device and dtype, got {a.device}/{a.dtype} "
            f"and {b.device}/{b.dtype}"
        )
    if a.shape[0] != b.shape[0] or a.shape[2 : 2 + na_dim] != b.shape[2 : 2 + na_dim]:
        raise ValueError(
            f"{fn}: {a_name} and {b_name} must match in batch and spatial dims, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    if b.shape[1] < 1 or a.shape[1] % b.shape[1] != 0:
        raise ValueError(f"{fn}: {b_name} heads must evenly divide {a_name} heads, got {a.shape[1]} and {b.shape[1]}")


def _make_unfused(na_dim: int):
    qk_name, av_name = f"na{na_dim}d_qk", f"na{na_dim}d_av"

    def prepare(fn, spatial, kernel_size, dilation, is_causal):
        return _normalize(fn, na_dim, spatial, kernel_size, 1, dilation, is_causal)

    def qk_args(fn, query, key, kernel_size, dilation, is_causal, rpb):
        _check_unfused(fn, na_dim, query, "query", key, "key")
        if query.shape[-1] != key.shape[-1]:
            raise ValueError(f"{fn}: Q and K head dims must match, got {query.shape[-1]=}, {key.shape[-1]=}.")
        kernel, _, dilation_, causal = prepare(fn, query.shape[2 : 2 + na_dim], kernel_size, dilation, is_causal)
        _check_rpb(fn, rpb, query.shape[1], kernel, query)
        return kernel, dilation_, causal

    def av_args(fn, attn, value, kernel_size, dilation, is_causal):
        _check_unfused(fn, na_dim, attn, "attn", value, "value")
        kernel, _, dilation_, causal = prepare(fn, attn.shape[2 : 2 + na_dim], kernel_size, dilation, is_causal)
        if attn.shape[-1] != math.prod(kernel):
            raise ValueError(
                f"{fn}: attn's last dim must be prod(kernel_size) = {math.prod(kernel)}, got {attn.shape[-1]}"
            )
        return kernel, dilation_, causal

    def qk(
        query: Tensor,
        key: Tensor,
        kernel_size: IntOrTuple,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        rpb: OptTensor = None,
        *,
        backend: Backend = None,
    ) -> Tensor:
        kernel, dilation_, causal = qk_args(qk_name, query, key, kernel_size, dilation, is_causal, rpb)
        if QK_BACKENDS[qk_name].choose(backend, query) == "reference":
            return qk_ref(query, key, kernel_size, dilation, is_causal, rpb)
        return torch.ops.medkernels.na_qk(query, key, list(kernel), list(dilation_), list(causal), rpb)

    def av(
        attn: Tensor,
        value: Tensor,
        kernel_size: IntOrTuple,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        *,
        backend: Backend = None,
    ) -> Tensor:
        kernel, dilation_, causal = av_args(av_name, attn, value, kernel_size, dilation, is_causal)
        if AV_BACKENDS[av_name].choose(backend, attn) == "reference":
            return av_ref(attn, value, kernel_size, dilation, is_causal)
        return torch.ops.medkernels.na_av(attn, value, list(kernel), list(dilation_), list(causal))

    def qk_ref(
        query: Tensor,
        key: Tensor,
        kernel_size: IntOrTuple,
        dilation: IntOrTuple = 1,
        is_causal: BoolOrTuple = False,
        rpb: OptTensor = None,
    ) -> Tensor:
        return _qk_ref(query, key, *qk_args(f"{qk_name}_ref", query, key, kernel_size, dilation, is_causal, rpb), rpb)

    def av_ref(
        attn: Tensor, value: Tensor, kernel_size: IntOrTuple, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False
    ) -> Tensor:
        return _av_ref(attn, value, *av_args(f"{av_name}_ref", attn, value, kernel_size, dilation, is_causal))

    sp = ", ".join(f"X{i}" for i in range(na_dim))
    qk.__doc__ = f"""Neighborhood attention logits (natten 0.17's unfused ``{qk_name}``), heads first.

    Args:
        query: ``[B, H, {sp}, D]`` (not scaled here: multiply by the scale first, as natten 0.17 modules do).
        key: ``[B, H_kv, {sp}, D]``.
        kernel_size, dilation, is_causal: per axis, as in :func:`na{na_dim}d` (stride 1).
        rpb: optional bias ``[H, {", ".join(["2K-1"] * na_dim)}]``.
        backend: None/"auto", "cpu" or "reference".

    Returns:
        ``[B, H, {sp}, prod(kernel_size)]`` logits in the input dtype; window slots row-major; -inf in slots
        a causal window does not fill. Differentiable in query, key and rpb.
    """
    av.__doc__ = f"""Apply neighborhood attention weights to values (natten 0.17's unfused ``{av_name}``).

    Args:
        attn: ``[B, H, {sp}, prod(kernel_size)]`` weights (e.g. softmax of :func:`{qk_name}`).
        value: ``[B, H_kv, {sp}, Dv]``.
        kernel_size, dilation, is_causal: as given to :func:`{qk_name}`.
        backend: None/"auto", "cpu" or "reference".

    Returns:
        ``[B, H, {sp}, Dv]`` in the input dtype. Differentiable in attn and value.
    """
    qk_ref.__doc__ = f"Pure-PyTorch :func:`{qk_name}` (gathers each window by index)."
    av_ref.__doc__ = f"Pure-PyTorch :func:`{av_name}` (gathers each window by index)."
    for f, n in ((qk, qk_name), (av, av_name), (qk_ref, f"{qk_name}_ref"), (av_ref, f"{av_name}_ref")):
        f.__name__ = f.__qualname__ = n
    return qk, av, qk_ref, av_ref


na1d, na1d_ref = _make_fused(1)
na2d, na2d_ref = _make_fused(2)
na3d, na3d_ref = _make_fused(3)
na1d_qk, na1d_av, na1d_qk_ref, na1d_av_ref = _make_unfused(1)
na2d_qk, na2d_av, na2d_qk_ref, na2d_av_ref = _make_unfused(2)
na3d_qk, na3d_av, na3d_qk_ref, na3d_av_ref = _make_unfused(3)
