"""The ``natten`` package, three API generations, served by medkernels.

Hassani et al., "Neighborhood Attention Transformer" (arXiv 2204.07143), "Dilated Neighborhood Attention
Transformer" (arXiv 2209.15001). Every call runs on :mod:`medkernels.ops` (``na{1,2,3}d``, ``na{1,2,3}d_qk``,
``na{1,2,3}d_av``) or :mod:`medkernels.nn` (the modules), forward and backward, CPU and GPU.

Generations (``install(natten=...)``):

- "0.14" / "0.15": ``natten.functional.natten{1,2,3}dqkrpb(query, key, rpb, kernel_size, dilation)``,
  ``natten{n}dqk``, ``natten{n}dav(attn, value, kernel_size, dilation)`` (heads first ``[B, heads, *spatial, D]``,
  query pre-scaled: what HF transformers' NAT/DiNAT call), 0.15's ``na{n}d_qk``, ``na{n}d_qk_with_bias``,
  ``na{n}d_av``; modules ``NeighborhoodAttention{1,2,3}D(dim, num_heads, kernel_size, dilation=1, bias=True,
  qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0)`` (``bias``: the relative positional bias
  ``rpb``; inputs smaller than the window are zero-padded, as upstream).
- "0.17": ``natten.functional.na{n}d_qk(query, key, kernel_size, dilation=1, additional_keys=None,
  is_causal=False, rpb=None)``, ``na{n}d_av(attn, value, kernel_size, dilation=1, additional_values=None,
  is_causal=False)``, fused ``na{n}d(query, key, value, kernel_size, dilation=1, is_causal=False, rpb=None,
  scale=None, additional_keys=None, additional_values=None, xformers_kwargs=None)`` (heads last), the legacy
  functions above, ``natten.context``; modules ``(dim, num_heads, kernel_size, dilation=1, is_causal=False,
  rel_pos_bias=False, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0)``.
- "0.21": ``natten.na{n}d(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
  additional_keys=None, additional_values=None, ..., return_lse=False)``, ``natten.attention``,
  ``natten.merge_attentions``, ``natten.HAS_LIBNATTEN``, ``natten.context``; modules ``(embed_dim, num_heads,
  kernel_size, stride=1, dilation=1, is_causal=False, qkv_bias=True, qk_scale=None, proj_drop=0.0)``
  (:class:`medkernels.nn.NeighborhoodAttention2D` and siblings).
- "auto" (default): all of the above at once; where two generations share a name with different positional
  meanings (``na{n}d``: 5th argument dilation in 0.17, stride in 0.21; the modules: 4th argument dilation in
  0.14-0.17, stride in 0.21) a call is read as the NEWEST generation it fits: as 0.17 when it passes a
  keyword only 0.17 has (``rpb``, ``xformers_kwargs``; for modules ``dim``, ``rel_pos_bias``, ``attn_drop``,
  ``use_experimental_ops``), as 0.14 when a module gets ``bias``, else as 0.21. Clients that pass dilation
  positionally to those names must pick their generation (``--natten 0.17``).

Backend knobs (``natten.context``: fused/KV-parallel/autotuner/flex/memory preference) are recorded and
reported back but do not change medkernels' kernels, which pick their backend themselves (CPU, Triton, CUDA).
"""

from __future__ import annotations

import importlib
import math
import types
from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F

from medkernels import nn as mknn
from medkernels import ops
from medkernels.ops.checks import na_causal, na_dims

from ._finder import NATTEN_GENERATIONS, _family

__all__ = ["attention", "merge_attentions", "check_all_args", "module_class", "functional"]

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------------
# Functional API.


def _dil(dilation):
    """natten 0.14-0.17 read ``dilation=None`` as 1 (MedViTV2 passes it)."""
    return 1 if dilation is None else dilation


def _causal(is_causal):
    return False if is_causal is None else is_causal


def _prod_kernel(fn: str, kernel_size, n: int) -> int:
    return math.prod(na_dims("kernel_size", kernel_size, n, 2, "all >= 2"))


def _expand_heads(fn: str, name: str, t: Tensor, heads: int, dim: int) -> Tensor:
    if t.shape[dim] == heads:
        return t
    if t.shape[dim] < 1 or heads % t.shape[dim] != 0:
        raise ValueError(f"{fn}: {name} heads ({t.shape[dim]}) must divide the query heads ({heads})")
    return t.repeat_interleave(heads // t.shape[dim], dim=dim)


def _make_unfused(n: int):
    qk_op, av_op = getattr(ops, f"na{n}d_qk"), getattr(ops, f"na{n}d_av")

    def na_qk(
        query: Tensor,
        key: Tensor,
        kernel_size,
        dilation=1,
        additional_keys: Tensor | None = None,
        is_causal=False,
        rpb: Tensor | None = None,
    ) -> Tensor:
        fn = f"natten.functional.na{n}d_qk"
        dilation, is_causal = _dil(dilation), _causal(is_causal)
        attn = qk_op(query, key, kernel_size, dilation, is_causal, rpb)
        if additional_keys is None:
            return attn
        if not isinstance(additional_keys, Tensor) or additional_keys.dim() != 4:
            raise ValueError(f"{fn}: additional_keys must be a [batch, heads, N_add, dim] tensor")
        ak = _expand_heads(fn, "additional_keys", additional_keys, query.shape[1], 1)
        b, h = query.shape[:2]
        extra = torch.matmul(query.reshape(b, h, -1, query.shape[-1]), ak.transpose(-1, -2).to(query.dtype))
        return torch.cat([attn, extra.reshape(*attn.shape[:-1], ak.shape[2])], dim=-1)

    def na_av(
        attn: Tensor, value: Tensor, kernel_size, dilation=1, additional_values: Tensor | None = None, is_causal=False
    ) -> Tensor:
        fn = f"natten.functional.na{n}d_av"
        dilation, is_causal = _dil(dilation), _causal(is_causal)
        if additional_values is None:
            return av_op(attn, value, kernel_size, dilation, is_causal)
        if not isinstance(additional_values, Tensor) or additional_values.dim() != 4:
            raise ValueError(f"{fn}: additional_values must be a [batch, heads, N_add, dim] tensor")
        window = _prod_kernel(fn, kernel_size, n)
        if attn.shape[-1] != window + additional_values.shape[2]:
            raise ValueError(
                f"{fn}: attn's last dim must be prod(kernel_size) + N_add = {window + additional_values.shape[2]}, "
                f"got {attn.shape[-1]}"
            )
        av = _expand_heads(fn, "additional_values", additional_values, attn.shape[1], 1)
        out = av_op(attn[..., :window].contiguous(), value, kernel_size, dilation, is_causal)
        b, h = attn.shape[:2]
        extra = torch.matmul(attn[..., window:].reshape(b, h, -1, av.shape[2]), av.to(attn.dtype))
        return out + extra.reshape(out.shape).to(out.dtype)

    doc_sp = ", ".join(f"X{i}" for i in range(n))
    na_qk.__doc__ = f"""natten 0.15-0.17 ``na{n}d_qk``: neighborhood attention logits, heads first.

    Args:
        query: ``[B, H, {doc_sp}, D]``, already scaled (natten does not scale here).
        key: ``[B, H_kv, {doc_sp}, D]``.
        kernel_size, dilation, is_causal: int/bool or per-axis tuples.
        additional_keys: optional ``[B, H_kv, N_add, D]`` keys every query also attends to (appended columns).
        rpb: optional relative positional bias ``[H, {", ".join(["2K-1"] * n)}]``.

    Returns:
        ``[B, H, {doc_sp}, prod(kernel_size) (+ N_add)]``.
    """
    na_av.__doc__ = f"""natten 0.15-0.17 ``na{n}d_av``: attention weights times values, heads first.

    Args:
        attn: ``[B, H, {doc_sp}, prod(kernel_size) (+ N_add)]``.
        value: ``[B, H_kv, {doc_sp}, Dv]``.
        kernel_size, dilation, is_causal: as :func:`na{n}d_qk`.
        additional_values: optional ``[B, H_kv, N_add, Dv]``, matching the additional keys.

    Returns:
        ``[B, H, {doc_sp}, Dv]``.
    """
    na_qk.__name__ = na_qk.__qualname__ = f"na{n}d_qk"
    na_av.__name__ = na_av.__qualname__ = f"na{n}d_av"

    def natten_qkrpb(query: Tensor, key: Tensor, rpb: Tensor | None, kernel_size, dilation) -> Tensor:
        return qk_op(query, key, kernel_size, _dil(dilation), False, rpb)

    def natten_qk(query: Tensor, key: Tensor, kernel_size, dilation) -> Tensor:
        return qk_op(query, key, kernel_size, _dil(dilation))

    def natten_av(attn: Tensor, value: Tensor, kernel_size, dilation) -> Tensor:
        return av_op(attn, value, kernel_size, _dil(dilation))

    def na_qk_with_bias(query: Tensor, key: Tensor, bias: Tensor | None, kernel_size, dilation) -> Tensor:
        return qk_op(query, key, kernel_size, _dil(dilation), False, bias)

    for f, name in (
        (natten_qkrpb, f"natten{n}dqkrpb"),
        (natten_qk, f"natten{n}dqk"),
        (natten_av, f"natten{n}dav"),
        (na_qk_with_bias, f"na{n}d_qk_with_bias"),
    ):
        f.__name__ = f.__qualname__ = name
        f.__doc__ = (
            f"natten 0.14-0.17 ``{name}`` (heads first ``[B, H, {doc_sp}, D]``; query pre-scaled): "
            f"see :func:`medkernels.ops.na{n}d_qk` / :func:`medkernels.ops.na{n}d_av`."
        )
    return {
        f"na{n}d_qk": na_qk,
        f"na{n}d_av": na_av,
        f"natten{n}dqkrpb": natten_qkrpb,
        f"natten{n}dqk": natten_qk,
        f"natten{n}dav": natten_av,
        f"na{n}d_qk_with_bias": na_qk_with_bias,
    }


_017_ONLY_KWARGS = ("rpb", "xformers_kwargs")


def _make_fused(n: int):
    op = getattr(ops, f"na{n}d")
    doc_sp = ", ".join(f"X{i}" for i in range(n))

    def na_017(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        kernel_size,
        dilation=1,
        is_causal=False,
        rpb: Tensor | None = None,
        scale: float | None = None,
        additional_keys: Tensor | None = None,
        additional_values: Tensor | None = None,
        xformers_kwargs: dict | None = None,
    ) -> Tensor:
        return op(
            query, key, value, kernel_size, 1, dilation, is_causal, scale, additional_keys, additional_values, rpb=rpb
        )

    def na_021(
        query: Tensor,
        key: Tensor,
        value: Tensor,
        kernel_size,
        stride=1,
        dilation=1,
        is_causal=False,
        scale: float | None = None,
        additional_keys: Tensor | None = None,
        additional_values: Tensor | None = None,
        attention_kwargs: dict | None = None,
        backend: str | None = None,
        q_tile_shape=None,
        kv_tile_shape=None,
        backward_q_tile_shape=None,
        backward_kv_tile_shape=None,
        backward_kv_splits=None,
        backward_use_pt_reduction: bool = False,
        run_persistent_kernel: bool = True,
        kernel_schedule=None,
        torch_compile: bool = False,
        return_lse: bool = False,
    ):
        return op(
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
            return_lse=return_lse,
        )

    def na_auto(*args, **kwargs):
        if any(k in kwargs for k in _017_ONLY_KWARGS):
            return na_017(*args, **kwargs)
        return na_021(*args, **kwargs)

    na_017.__doc__ = f"""natten 0.17 fused ``na{n}d`` (heads last), on :func:`medkernels.ops.na{n}d`.

    Args:
        query, key, value: ``[B, {doc_sp}, H, D]`` (key/value may have fewer heads: GQA).
        kernel_size, dilation, is_causal: int/bool or per-axis tuples (the 5th positional is dilation).
        rpb: optional ``[H, {", ".join(["2K-1"] * n)}]`` relative positional bias.
        scale: default ``D ** -0.5``.
        additional_keys, additional_values: optional ``[B, N_add, H_kv, D]`` extra keys/values.
        xformers_kwargs: accepted and ignored.

    Returns:
        ``[B, {doc_sp}, H, Dv]``.
    """
    na_021.__doc__ = f"""natten 0.21 ``na{n}d`` (heads last), on :func:`medkernels.ops.na{n}d`.

    Args:
        query, key, value: ``[B, {doc_sp}, H, D]`` (key/value may have fewer heads: GQA).
        kernel_size, stride, dilation, is_causal: int/bool or per-axis tuples (the 5th positional is stride).
        scale: default ``D ** -0.5``.
        additional_keys, additional_values: optional ``[B, N_add, H_kv, D]`` extra keys/values.
        attention_kwargs, backend, tile shapes, kernel_schedule, torch_compile, ...: natten's backend
            knobs, accepted; medkernels picks its own backend.
        return_lse: also return the logsumexp ``[B, {doc_sp}, H]`` float32.

    Returns:
        ``[B, {doc_sp}, H, Dv]``, or ``(out, lse)``.
    """
    na_auto.__doc__ = (
        f"``na{n}d`` of natten 0.17 or 0.21: read as 0.17 when called with ``rpb`` or ``xformers_kwargs``, "
        "else as 0.21 (5th positional = stride). See the 0.17 and 0.21 forms in this module."
    )
    for f in (na_017, na_021, na_auto):
        f.__name__ = f.__qualname__ = f"na{n}d"
    return na_017, na_021, na_auto


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    seqlens_Q: Tensor | None = None,
    seqlens_KV: Tensor | None = None,
    cumulative_seqlen_Q: Tensor | None = None,
    cumulative_seqlen_KV: Tensor | None = None,
    max_seqlen_Q: int | None = None,
    max_seqlen_KV: int | None = None,
    backend: str | None = None,
    q_tile_size: int | None = None,
    kv_tile_size: int | None = None,
    backward_q_tile_size: int | None = None,
    backward_kv_tile_size: int | None = None,
    backward_kv_splits: int | None = None,
    backward_use_pt_reduction: bool = False,
    run_persistent_kernel: bool = True,
    kernel_schedule=None,
    torch_compile: bool = False,
    return_lse: bool = False,
):
    """natten 0.21 ``attention``: dense self/cross attention, heads last.

    Args:
        query: ``[B, L_q, H, D]``.
        key: ``[B, L_kv, H_kv, D]``; H % H_kv == 0.
        value: ``[B, L_kv, H_kv, Dv]``.
        is_causal: causal mask (query i sees keys j <= i).
        scale: default ``D ** -0.5``.
        seqlens_* / cumulative_seqlen_* / max_seqlen_*: natten's variable-length mode, not supported
            (NotImplementedError).
        backend, tile sizes, kernel_schedule, torch_compile: accepted; computed with PyTorch matmuls.
        return_lse: also return the logsumexp ``[B, L_q, H]`` float32.

    Returns:
        ``[B, L_q, H, Dv]`` in the query's dtype, or ``(out, lse)``.
    """
    fn = "natten.attention"
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"{fn}: {name} must be a 4-D [batch, seqlen, heads, dim] tensor")
    for name, v in (
        ("seqlens_Q", seqlens_Q),
        ("seqlens_KV", seqlens_KV),
        ("cumulative_seqlen_Q", cumulative_seqlen_Q),
        ("cumulative_seqlen_KV", cumulative_seqlen_KV),
    ):
        if v is not None:
            raise NotImplementedError(f"{fn}: {name} (variable-length attention) is not supported by medkernels")
    if key.shape[:2] != value.shape[:2] or key.shape[2] != value.shape[2] or query.shape[0] != key.shape[0]:
        raise ValueError(f"{fn}: key {tuple(key.shape)} and value {tuple(value.shape)} do not match the query")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"{fn}: query and key head dims differ: {query.shape[-1]} and {key.shape[-1]}")
    heads = query.shape[2]
    k = _expand_heads(fn, "key", key, heads, 2)
    v = _expand_heads(fn, "value", value, heads, 2)
    acc = torch.float64 if query.dtype == torch.float64 else torch.float32
    s = scale if scale is not None else query.shape[-1] ** -0.5
    logits = torch.einsum("blhd,bmhd->bhlm", query.to(acc), k.to(acc)) * s
    if is_causal:
        lq, lk = logits.shape[-2:]
        mask = torch.ones(lq, lk, dtype=torch.bool, device=query.device).tril()
        logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # (B, H, L_q)
    out = torch.einsum("bhlm,bmhd->blhd", torch.exp(logits - lse[..., None]), v.to(acc)).to(query.dtype)
    return (out, lse.transpose(1, 2).float().contiguous()) if return_lse else out


def merge_attentions(
    outputs: Sequence[Tensor], lse_tensors: Sequence[Tensor], torch_compile: bool = True, use_autograd_fix: bool = True
) -> tuple[Tensor, Tensor]:
    """natten 0.21 ``merge_attentions``: combines attention outputs over disjoint key sets through their LSEs.

    Args:
        outputs: outputs ``[B, *, H, D]``, all the same shape and dtype.
        lse_tensors: their logsumexps ``[B, *, H]``.
        torch_compile, use_autograd_fix: accepted (differentiable PyTorch here).

    Returns:
        ``(merged [B, *, H, D] in the outputs' dtype, merged lse [B, *, H] float32)``.
    """
    fn = "natten.merge_attentions"
    if not isinstance(outputs, (list, tuple)) or not isinstance(lse_tensors, (list, tuple)):
        raise TypeError(f"{fn}: outputs and lse_tensors must be lists of tensors")
    if len(outputs) < 1 or len(outputs) != len(lse_tensors):
        raise ValueError(
            f"{fn}: outputs and lse_tensors must be non-empty and equally long, "
            f"got {len(outputs)} and {len(lse_tensors)}"
        )
    for o, l in zip(outputs, lse_tensors):
        if o.shape != outputs[0].shape or o.shape[:-1] != l.shape:
            raise ValueError(
                f"{fn}: outputs {tuple(o.shape)} and lse {tuple(l.shape)} must be [B, *, H, D] and [B, *, H]"
            )
    acc = torch.float64 if outputs[0].dtype == torch.float64 else torch.float32
    lse = torch.stack([l.to(acc) for l in lse_tensors])
    merged_lse = torch.logsumexp(lse, dim=0)
    weights = torch.exp(lse - merged_lse)[..., None]
    merged = (weights * torch.stack([o.to(acc) for o in outputs])).sum(0)
    return merged.to(outputs[0].dtype), merged_lse.float()


def check_all_args(na_dim: int, kernel_size, dilation=1, is_causal=False):
    """natten 0.17 ``natten.utils.check_all_args``: per-axis tuples ``(kernel_size, dilation, is_causal)``."""
    return (
        na_dims("kernel_size", kernel_size, na_dim, 2, "all >= 2"),
        na_dims("dilation", _dil(dilation), na_dim, 1, "all positive"),
        na_causal(_causal(is_causal), na_dim),
    )


# ---------------------------------------------------------------------------------------------------
# Modules.


def _args_014(
    dim,
    num_heads,
    kernel_size,
    dilation=1,
    bias=True,
    qkv_bias=True,
    qk_scale=None,
    attn_drop=0.0,
    proj_drop=0.0,
    *,
    device=None,
    dtype=None,
):  # noqa: E501
    return {
        "embed_dim": dim, "num_heads": num_heads, "kernel_size": kernel_size, "dilation": _dil(dilation),
        "qkv_bias": qkv_bias, "qk_scale": qk_scale, "proj_drop": proj_drop, "rel_pos_bias": bias,
        "attn_drop": attn_drop, "device": device, "dtype": dtype,
    }  # fmt: skip


def _args_017(
    dim,
    num_heads,
    kernel_size,
    dilation=1,
    is_causal=False,
    rel_pos_bias=False,
    qkv_bias=True,
    qk_scale=None,
    attn_drop=0.0,
    proj_drop=0.0,
    use_experimental_ops=False,
    *,
    device=None,
    dtype=None,
):  # noqa: E501
    return {
        "embed_dim": dim, "num_heads": num_heads, "kernel_size": kernel_size, "dilation": _dil(dilation),
        "is_causal": _causal(is_causal), "qkv_bias": qkv_bias, "qk_scale": qk_scale, "proj_drop": proj_drop,
        "rel_pos_bias": rel_pos_bias, "attn_drop": attn_drop, "device": device, "dtype": dtype,
    }  # fmt: skip


def _args_021(
    embed_dim,
    num_heads,
    kernel_size,
    stride=1,
    dilation=1,
    is_causal=False,
    qkv_bias=True,
    qk_scale=None,
    proj_drop=0.0,
    *,
    device=None,
    dtype=None,
):  # noqa: E501
    return {
        "embed_dim": embed_dim, "num_heads": num_heads, "kernel_size": kernel_size, "stride": stride,
        "dilation": dilation, "is_causal": is_causal, "qkv_bias": qkv_bias, "qk_scale": qk_scale,
        "proj_drop": proj_drop, "device": device, "dtype": dtype,
    }  # fmt: skip


_MODULE_ARGS = {"0.14": _args_014, "0.17": _args_017, "0.21": _args_021}
_017_MODULE_KWARGS = ("dim", "rel_pos_bias", "attn_drop", "use_experimental_ops")


def _module_style(kwargs: dict) -> str:
    if "bias" in kwargs:
        return "0.14"
    if any(k in kwargs for k in _017_MODULE_KWARGS):
        return "0.17"
    return "0.21"


_MODULE_DOC = {
    "0.14": "(dim, num_heads, kernel_size, dilation=1, bias=True, qkv_bias=True, qk_scale=None, attn_drop=0.0, "
    "proj_drop=0.0): ``bias`` learns the relative positional bias ``rpb``; inputs smaller than the window "
    "(kernel_size * dilation) are zero-padded, then cropped (natten 0.14-0.15)",
    "0.17": "(dim, num_heads, kernel_size, dilation=1, is_causal=False, rel_pos_bias=False, qkv_bias=True, "
    "qk_scale=None, attn_drop=0.0, proj_drop=0.0) (natten 0.17)",
    "0.21": "(embed_dim, num_heads, kernel_size, stride=1, dilation=1, is_causal=False, qkv_bias=True, "
    "qk_scale=None, proj_drop=0.0) (natten 0.21)",
    "auto": "natten 0.14, 0.17 or 0.21 arguments, read as the newest generation the call fits: 0.14 with "
    "``bias=``, 0.17 with ``dim=``/``rel_pos_bias=``/``attn_drop=``/``use_experimental_ops=``, else 0.21 "
    "(the 4th positional argument is then stride)",
}

_CLASSES: dict[tuple[str, int], type] = {}


def module_class(generation: str, n: int) -> type:
    """The ``NeighborhoodAttention{n}D`` class served for ``generation`` ("0.14", "0.17", "0.21", "auto").

    Subclasses of :class:`medkernels.nn.NeighborhoodAttention{n}D` (same parameters: ``qkv``, ``proj``,
    ``rpb``), so the real package's checkpoints load with ``strict=True``.
    """
    key = (generation, n)
    if key in _CLASSES:
        return _CLASSES[key]
    base = getattr(mknn, f"NeighborhoodAttention{n}D")

    def __init__(self, *args, **kwargs) -> None:
        style = generation if generation != "auto" else _module_style(kwargs)
        try:
            config = _MODULE_ARGS[style](*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"NeighborhoodAttention{n}D (natten {style} arguments): {exc}") from None
        base.__init__(self, **config)
        self.natten_api = style
        self._pad_to_window = style == "0.14"
        self.window_size = tuple(k * d for k, d in zip(self.kernel_size, self.dilation))

    def forward(self, x: Tensor) -> Tensor:
        if not self._pad_to_window or x.dim() != n + 2:
            return base.forward(self, x)
        spatial = x.shape[1 : 1 + n]
        short = [max(0, w - s) for w, s in zip(self.window_size, spatial)]
        if not any(short):
            return base.forward(self, x)
        pad = [0, 0]  # channels
        for s in reversed(short):
            pad += [0, s]
        out = base.forward(self, F.pad(x, pad))
        return out[(slice(None), *(slice(0, s) for s in spatial))]

    cls = type(
        f"NeighborhoodAttention{n}D",
        (base,),
        {
            "__init__": __init__,
            "forward": forward,
            "__module__": f"natten.na{n}d" if generation != "0.14" else f"natten.natten{n}d",
            "__doc__": f"natten's ``NeighborhoodAttention{n}D`` on medkernels: {_MODULE_DOC[generation]}. "
            f"Input/output ``[B, {', '.join(f'X{i}' for i in range(n))}, C]``.",
        },
    )
    cls.__qualname__ = cls.__name__
    _CLASSES[key] = cls
    return cls


# ---------------------------------------------------------------------------------------------------
# natten.context: backend knobs (recorded, reported back; medkernels picks its backends itself).

_CTX: dict[str, object] = {
    "deterministic": False,
    "kv_parallel": True,
    "memory": "default",
    "fused": False,
    "autotuner": (False, False, False, False),
    "tiled": True,
    "gemm": True,
    "tf32": True,
    "flex": False,
    "flex_compile": False,
    "flex_compile_backprop": False,
}
_MEMORY = ("default", "strict", "unrestricted")


def _make_context() -> dict[str, object]:
    def set_(key):
        def setter(mode: bool = True) -> None:
            _CTX[key] = bool(mode)

        return setter

    def get_(key):
        def getter() -> bool:
            return bool(_CTX[key])

        return getter

    def set_memory_usage_preference(pref: str = "default") -> None:
        if pref not in _MEMORY:
            raise ValueError(f"natten.set_memory_usage_preference: pref must be one of {_MEMORY}, got {pref!r}")
        _CTX["memory"] = pref

    def use_fused_na(mode: bool = True, kv_parallel: bool = True, use_flex_attention: bool = False) -> None:
        _CTX["fused"], _CTX["kv_parallel"], _CTX["flex"] = bool(mode), bool(kv_parallel), bool(use_flex_attention)

    def use_autotuner(
        forward_pass: bool = False,
        backward_pass: bool = False,
        thorough_mode_forward: bool = False,
        thorough_mode_backward: bool = False,
        **_ignored,
    ) -> None:
        _CTX["autotuner"] = (
            bool(forward_pass),
            bool(backward_pass),
            bool(thorough_mode_forward),
            bool(thorough_mode_backward),
        )

    def allow_flex_compile(mode: bool = True, backprop: bool = False) -> None:
        _CTX["flex_compile"], _CTX["flex_compile_backprop"] = bool(mode), bool(mode and backprop)

    def has_cuda() -> bool:
        return torch.cuda.is_available()

    def has_true(device_index=None) -> bool:
        return True

    ctx: dict[str, object] = {
        "use_deterministic_algorithms": set_("deterministic"),
        "are_deterministic_algorithms_enabled": get_("deterministic"),
        "use_kv_parallelism_in_fused_na": set_("kv_parallel"),
        "is_kv_parallelism_in_fused_na_enabled": get_("kv_parallel"),
        "set_memory_usage_preference": set_memory_usage_preference,
        "get_memory_usage_preference": lambda: _CTX["memory"],
        "is_memory_usage_default": lambda: _CTX["memory"] == "default",
        "is_memory_usage_strict": lambda: _CTX["memory"] == "strict",
        "is_memory_usage_unrestricted": lambda: _CTX["memory"] == "unrestricted",
        # 0.17
        "use_fused_na": use_fused_na,
        "use_fna": use_fused_na,
        "is_fused_na_enabled": get_("fused"),
        "is_fna_enabled": get_("fused"),
        "use_flex_attention": lambda: _CTX.__setitem__("flex", True),
        "force_flex_attention": lambda: _CTX.__setitem__("flex", True),
        "use_autotuner": use_autotuner,
        "disable_autotuner": lambda: use_autotuner(),
        "is_autotuner_enabled": lambda: any(_CTX["autotuner"][:2]),
        "is_autotuner_enabled_for_forward": lambda: _CTX["autotuner"][0],
        "is_autotuner_enabled_for_backward": lambda: _CTX["autotuner"][1],
        "is_autotuner_thorough_for_forward": lambda: _CTX["autotuner"][2],
        "is_autotuner_thorough_for_backward": lambda: _CTX["autotuner"][3],
        "use_tiled_na": set_("tiled"),
        "is_tiled_na_enabled": get_("tiled"),
        "use_gemm_na": set_("gemm"),
        "is_gemm_na_enabled": get_("gemm"),
        "use_tf32_in_gemm_na": set_("tf32"),
        "is_tf32_in_gemm_na_enabled": get_("tf32"),
        "enable_tf32": lambda: set_("tf32")(True),
        "disable_tf32": lambda: set_("tf32")(False),
        "enable_gemm_na": lambda: set_("gemm")(True),
        "disable_gemm_na": lambda: set_("gemm")(False),
        "enable_tiled_na": lambda: set_("tiled")(True),
        "disable_tiled_na": lambda: set_("tiled")(False),
        "has_cuda": has_cuda,
        "has_half": has_true,
        "has_bfloat": has_true,
        "has_gemm": has_true,
        "has_fna": has_true,
        "has_fused_na": has_true,
        "has_tf32_gemm": has_true,
        "has_fp32_gemm": has_true,
        "has_fp64_gemm": has_true,
        # 0.21
        "allow_flex_compile": allow_flex_compile,
        "allow_flex_compile_backprop": lambda mode=True: _CTX.__setitem__("flex_compile_backprop", bool(mode)),
        "disable_flex_compile": lambda: allow_flex_compile(False),
        "disable_flex_compile_backprop": lambda: _CTX.__setitem__("flex_compile_backprop", False),
        "is_flex_compile_allowed": get_("flex_compile"),
        "is_flex_compile_backprop_allowed": get_("flex_compile_backprop"),
    }
    for name, f in ctx.items():
        if getattr(f, "__name__", "") in ("<lambda>", "setter", "getter", "has_true"):
            f.__name__ = f.__qualname__ = name
    return ctx


_CONTEXT = _make_context()
_CONTEXT_017 = [k for k in _CONTEXT if not k.startswith(("allow_flex", "disable_flex", "is_flex"))]
_CONTEXT_021 = [
    k
    for k in _CONTEXT
    if k.startswith(("allow_flex", "disable_flex", "is_flex", "use_deterministic", "are_deterministic"))
    or "memory" in k
    or "kv_parallelism" in k
]


def _has_libnatten() -> bool:
    """natten 0.21's ``HAS_LIBNATTEN`` (its compiled kernels): here, whether medkernels' compiled kernels loaded."""
    try:
        return hasattr(torch.ops.medkernels, "na_fwd")
    except (AttributeError, RuntimeError):
        return False


# ---------------------------------------------------------------------------------------------------
# What each generation serves.

_UNFUSED = {n: _make_unfused(n) for n in (1, 2, 3)}
_FUSED = {n: _make_fused(n) for n in (1, 2, 3)}


def _gen(config) -> str:
    return config.natten if config.natten == "auto" else _family(config.natten)


def functional(generation: str) -> dict[str, object]:
    """The names of ``natten.functional`` for ``generation`` ("0.14", "0.17", "0.21" or "auto")."""
    out: dict[str, object] = {}
    for n in (1, 2, 3):
        unfused = _UNFUSED[n]
        na_017, na_021, na_auto = _FUSED[n]
        if generation in ("0.14", "0.17", "auto"):
            for k in (f"natten{n}dqkrpb", f"natten{n}dqk", f"natten{n}dav", f"na{n}d_qk", f"na{n}d_av"):
                out[k] = unfused[k]
        if generation in ("0.14", "auto"):
            out[f"na{n}d_qk_with_bias"] = unfused[f"na{n}d_qk_with_bias"]
        out_fused = {"0.17": na_017, "0.21": na_021, "auto": na_auto}.get(generation)
        if out_fused is not None:
            out[f"na{n}d"] = out_fused
    if generation in ("0.21", "auto"):
        out["attention"] = attention
        out["merge_attentions"] = merge_attentions
    return out


def _submodules(generation: str) -> dict[str, bool]:
    """Served module names (without the ``natten.`` prefix) -> is_package."""
    subs = {"functional": False, "utils": False, "types": False}
    if generation in ("0.14", "auto"):
        subs.update({f"natten{n}d": False for n in (1, 2, 3)})
    if generation in ("0.17", "auto"):
        subs.update({f"na{n}d": False for n in (1, 2, 3)})
        subs.update({f"natten{n}d": False for n in (1, 2, 3)})
    if generation in ("0.17", "0.21", "auto"):
        subs["context"] = False
    if generation in ("0.21", "auto"):
        subs["modules"] = False
    return subs


def _types() -> dict[str, object]:
    out: dict[str, object] = {}
    for n in (1, 2, 3):
        dims = tuple[(int,) * n]
        causal = tuple[(bool,) * n]
        out[f"Dimension{n}DType"] = dims
        out[f"Dimension{n}DTypeOrDed"] = Union[int, dims]
        out[f"CausalArg{n}DType"] = causal
        out[f"CausalArg{n}DTypeOrDed"] = Union[bool, causal]
    out["DimensionType"] = tuple
    out["CausalArgType"] = tuple
    return out


def _contents(fullname: str, generation: str) -> dict[str, object]:
    sub = fullname.partition(".")[2]
    classes = {f"NeighborhoodAttention{n}D": module_class(generation, n) for n in (1, 2, 3)}
    if sub == "":
        version = NATTEN_GENERATIONS["0.21" if generation == "auto" else generation]
        out: dict[str, object] = {"__version__": version, **classes}
        if generation == "0.14":
            out["NeighborhoodAttention"] = classes["NeighborhoodAttention2D"]
        if generation in ("0.17", "auto"):
            out.update({k: _CONTEXT[k] for k in _CONTEXT_017})
        if generation in ("0.21", "auto"):
            fused = functional("0.21")
            out.update({k: fused[k] for k in ("na1d", "na2d", "na3d", "attention", "merge_attentions")})
            out.update({k: _CONTEXT[k] for k in _CONTEXT_021})
            out["HAS_LIBNATTEN"] = _has_libnatten()
        return out
    if sub == "functional":
        return functional(generation)
    if sub == "context":
        names = {"0.17": _CONTEXT_017, "0.21": _CONTEXT_021}.get(generation, list(_CONTEXT))
        return {k: _CONTEXT[k] for k in names}
    if sub == "modules":
        return dict(classes)
    if sub.startswith(("na", "natten")) and sub[-2:] in ("1d", "2d", "3d"):
        n = int(sub[-2])
        out = {f"NeighborhoodAttention{n}D": classes[f"NeighborhoodAttention{n}D"]}
        if sub == "natten2d":
            out["NeighborhoodAttention"] = classes["NeighborhoodAttention2D"]
        return out
    if sub == "utils":
        return {"check_all_args": check_all_args}
    if sub == "types":
        return _types()
    raise KeyError(fullname)


# ---------------------------------------------------------------------------------------------------
# The provider interface (medkernels.compat._finder).


def has_module(fullname: str, config) -> bool:
    if fullname == "natten":
        return True
    top, _, sub = fullname.partition(".")
    return top == "natten" and sub in _submodules(_gen(config))


def is_package(fullname: str, config) -> bool:
    return fullname == "natten"


class _CallableModule(types.ModuleType):
    """``natten.na{n}d`` in "auto": natten 0.17's module file (``NeighborhoodAttention{n}D``) that is also
    natten 0.21's function, because importing the submodule rebinds the package attribute to it."""

    _function = None

    def __call__(self, *args, **kwargs):
        return self._function(*args, **kwargs)


def create_module(fullname: str, config):
    sub = fullname.partition(".")[2]
    if _gen(config) == "auto" and sub in ("na1d", "na2d", "na3d"):
        module = _CallableModule(fullname)
        module._function = _FUSED[int(sub[2])][2]
        return module
    return None


def build(module, fullname: str, config) -> None:
    generation = _gen(config)
    contents = _contents(fullname, generation)
    for name, value in contents.items():
        setattr(module, name, value)
    module.__all__ = [k for k in contents if not k.startswith("_")]
    label = "auto (0.14-0.21)" if generation == "auto" else generation
    module.__doc__ = f"natten's {fullname} (API {label}), served by medkernels.compat on medkernels' kernels."
    if fullname == "natten":
        # As the real package: importing natten makes natten.functional (and natten.context) attributes.
        for sub in ("functional", "context", "modules", "utils", "types"):
            if sub in _submodules(generation):
                setattr(module, sub, importlib.import_module(f"natten.{sub}"))
