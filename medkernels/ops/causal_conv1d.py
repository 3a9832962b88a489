"""Causal depthwise conv1d: Mamba's short convolution (causal-conv1d's ``causal_conv1d_fn``).

Gu & Dao, "Mamba" (arXiv 2312.00752), section 3.4: a depthwise causal convolution of width 4
before the selective scan. ``causal_conv1d_fn`` has causal-conv1d's signature and math:
``out = act(F.conv1d(x, weight[:, None], bias, padding=W-1, groups=dim)[..., :L])`` with optional
initial states, final states and ``seq_idx`` (packed sequences do not see each other). Beyond
causal-conv1d: any width (upstream: 2-4), ``seq_idx`` and initial states in the ordinary
contiguous layout (upstream: channel-last with dim % 8 == 0 only), CPU kernels, a deterministic
backward, and torch.compile support.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._typing import Backend, OptTensor, Tensor
from . import _library
from ._backend import Backends
from .checks import has_values

__all__ = ["causal_conv1d_fn", "causal_conv1d_ref", "causal_conv1d_update"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _silu(activation, fn) -> bool:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"{fn}: activation must be None, 'silu' or 'swish', got {activation!r}")
    return activation is not None


def _is_tensor(fn: str, name: str, t, optional: bool = True) -> None:
    """TypeError unless ``t`` is a tensor (or None when ``optional``)."""
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        allowed = "a torch.Tensor or None" if optional else "a torch.Tensor"
        raise TypeError(f"{fn}: {name} must be {allowed}, got {type(t).__name__}")


def _check(fn, x, weight, bias, seq_idx, initial_states, return_final_states, final_states_out):
    """The checks shared by causal_conv1d_fn and causal_conv1d_ref (every backend sees valid input)."""
    _is_tensor(fn, "x", x, optional=False)
    _is_tensor(fn, "weight", weight, optional=False)
    for name, t in (
        ("bias", bias),
        ("seq_idx", seq_idx),
        ("initial_states", initial_states),
        ("final_states_out", final_states_out),
    ):
        _is_tensor(fn, name, t)
    if x.dim() != 3:
        raise ValueError(f"{fn}: x must be (batch, dim, seqlen), got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{fn}: x must be float32, float16 or bfloat16 (or float64), got {x.dtype}")
    batch, dim, seqlen = x.shape
    if weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"{fn}: weight must be (dim, width) with dim={dim}, got {tuple(weight.shape)}")
    width = weight.shape[1]
    if weight.dtype not in (x.dtype, torch.float32):
        raise ValueError(f"{fn}: weight must have x's dtype ({x.dtype}) or float32, got {weight.dtype}")
    named = {
        "weight": weight,
        "bias": bias,
        "seq_idx": seq_idx,
        "initial_states": initial_states,
        "final_states_out": final_states_out,
    }
    for name, t in named.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but x is on {x.device}")
    if bias is not None and (bias.shape != (dim,) or bias.dtype not in (x.dtype, torch.float32)):
        raise ValueError(
            f"{fn}: bias must be (dim,) = ({dim},) in x's dtype or float32, got {tuple(bias.shape)} {bias.dtype}"
        )
    if seq_idx is not None:
        if seq_idx.shape != (batch, seqlen) or seq_idx.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"{fn}: seq_idx must be an int32 (batch, seqlen) = {(batch, seqlen)} tensor, got "
                f"{tuple(seq_idx.shape)} {seq_idx.dtype}"
            )
        if initial_states is not None:
            raise ValueError(f"{fn}: initial_states must be None if seq_idx is not None")
        if return_final_states:
            raise ValueError(f"{fn}: final states are not returned when seq_idx is given")
    if initial_states is not None and (
        initial_states.shape != (batch, dim, width - 1) or initial_states.dtype != x.dtype
    ):
        raise ValueError(
            f"{fn}: initial_states must be (batch, dim, width - 1) = {(batch, dim, width - 1)} in x's "
            f"dtype, got {tuple(initial_states.shape)} {initial_states.dtype}"
        )
    # The final states are x's values: a buffer of another dtype would round (or truncate) them.
    if final_states_out is not None and (
        final_states_out.shape != (batch, dim, width - 1) or final_states_out.dtype != x.dtype
    ):
        raise ValueError(
            f"{fn}: final_states_out must be (batch, dim, width - 1) = {(batch, dim, width - 1)} in "
            f"x's dtype ({x.dtype}), got {tuple(final_states_out.shape)} {final_states_out.dtype}"
        )


def _finish(out, final_states, return_final_states, final_states_out):
    if not return_final_states:
        return out
    if final_states_out is not None:
        with torch.no_grad():
            final_states_out.copy_(final_states)
        return out, final_states_out
    return out, final_states


def causal_conv1d_ref(
    x: Tensor,
    weight: Tensor,
    bias: OptTensor = None,
    seq_idx: OptTensor = None,
    initial_states: OptTensor = None,
    return_final_states: bool = False,
    final_states_out: OptTensor = None,
    activation: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Pure-PyTorch :func:`causal_conv1d_fn` (the oracle): taps as shifted copies, computed in float32
    (float64 for float64 inputs). Arguments as :func:`causal_conv1d_fn`."""
    fn = "causal_conv1d_ref"
    silu = _silu(activation, fn)
    _check(fn, x, weight, bias, seq_idx, initial_states, return_final_states, final_states_out)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    left = initial_states.to(acc) if initial_states is not None else x.new_zeros(batch, dim, width - 1, dtype=acc)
    ext = torch.cat([left, x.to(acc)], dim=-1)  # (batch, dim, W-1+L)
    out = torch.zeros(batch, dim, seqlen, dtype=acc, device=x.device)
    if bias is not None:
        out = out + bias.to(acc)[:, None]
    for k in range(width):
        tap = ext[..., k : k + seqlen]
        if seq_idx is not None:
            src = torch.arange(seqlen, device=x.device) - (width - 1) + k
            seq_src = seq_idx[:, src.clamp(min=0)]
            keep = (src < 0)[None] | (seq_src == seq_idx)
            tap = tap * keep[:, None, :]
        out = out + weight.to(acc)[:, k, None] * tap
    if silu:
        out = F.silu(out)
    final_states = ext[..., ext.shape[-1] - (width - 1) :].to(x.dtype)
    return _finish(out.to(x.dtype), final_states, return_final_states, final_states_out)


def _fwd_fake(x, weight, bias, seq_idx, initial_states, return_final_states, silu):
    final = x.new_empty((x.shape[0], x.shape[1], weight.shape[1] - 1)) if return_final_states else x.new_empty((0,))
    return torch.empty_like(x, memory_format=torch.contiguous_format), final


def _bwd_fake(x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(weight),
        x.new_empty((0,)) if bias is None else torch.empty_like(bias),
        x.new_empty((0,)) if initial_states is None else torch.empty_like(initial_states),
    )


def _setup(ctx, inputs, output):
    x, weight, bias, seq_idx, initial_states, return_final_states, silu = inputs
    ctx.save_for_backward(x, weight, bias, seq_idx, initial_states)
    ctx.silu = silu
    ctx.has_final = return_final_states


def _backward(ctx, bwd_op, dout, dfinal):
    x, weight, bias, seq_idx, initial_states = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(x)
    elif dout.stride(-1) != 1:
        dout = dout.contiguous()
    dx, dw, db, dinit = bwd_op(
        x, weight, bias, seq_idx, initial_states, dout, dfinal if ctx.has_final else None, ctx.silu
    )
    return (dx, dw, db if bias is not None else None, None, dinit if initial_states is not None else None, None, None)


if _library.HAS_TRITON:
    from typing import Optional

    from medkernels.triton import causal_conv1d as _tcc

    def _extended(x, initial_states, width):  # (batch, dim, W-1+L) float32: initial states (or 0), then x
        left = (
            initial_states.float()
            if initial_states is not None
            else x.new_zeros((x.shape[0], x.shape[1], width - 1), dtype=torch.float32)
        )
        return torch.cat([left, x.float()], dim=-1)

    def _triton_init(initial_states, x, width):
        if initial_states is None:
            return None
        return initial_states.float().reshape(x.shape[0] * x.shape[1], width - 1).contiguous()

    @torch.library.custom_op("medkernels::causal_conv1d_fwd_triton", mutates_args=())
    def _fwd_triton(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        seq_idx: Optional[torch.Tensor],
        initial_states: Optional[torch.Tensor],
        return_final_states: bool,
        silu: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = weight.shape[1]
        out = _tcc.forward(
            x.float().contiguous(),
            weight.float().contiguous(),
            None if bias is None else bias.float().contiguous(),
            _triton_init(initial_states, x, width),
            None if seq_idx is None else seq_idx.int().contiguous(),
            silu,
        )
        final = x.new_empty((0,))
        if return_final_states:
            ext = _extended(x, initial_states, width)
            final = ext[..., ext.shape[-1] - (width - 1) :].to(x.dtype).contiguous()
        return out.to(x.dtype), final

    @torch.library.custom_op("medkernels::causal_conv1d_bwd_triton", mutates_args=())
    def _bwd_triton(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        seq_idx: Optional[torch.Tensor],
        initial_states: Optional[torch.Tensor],
        dout: torch.Tensor,
        dfinal_states: Optional[torch.Tensor],
        silu: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        width, seqlen = weight.shape[1], x.shape[-1]
        seq = None if seq_idx is None else seq_idx.int().contiguous()
        g, dext = _tcc.backward(
            x.float().contiguous(),
            weight.float().contiguous(),
            None if bias is None else bias.float().contiguous(),
            _triton_init(initial_states, x, width),
            seq,
            dout.float().contiguous(),
            silu,
        )
        if dfinal_states is not None and width > 1:
            dext[..., dext.shape[-1] - (width - 1) :] += dfinal_states.float()
        ext = _extended(x, initial_states, width)
        taps = []
        for k in range(width):
            tap = ext[..., k : k + seqlen]
            if seq is not None:
                src = torch.arange(seqlen, device=x.device) - (width - 1) + k
                keep = (src < 0)[None] | (seq[:, src.clamp(min=0)] == seq)
                tap = tap * keep[:, None, :]
            taps.append((g * tap).sum(dim=(0, 2)))
        dw = torch.stack(taps, dim=-1).to(weight.dtype)
        db = x.new_empty((0,)) if bias is None else g.sum(dim=(0, 2)).to(bias.dtype)
        dinit = x.new_empty((0,)) if initial_states is None else dext[..., : width - 1].to(x.dtype, copy=True)
        return dext[..., width - 1 :].to(x.dtype, copy=True), dw, db, dinit


_library.register_kernel(
    "causal_conv1d_fn",
    ("causal_conv1d_fwd", "causal_conv1d_bwd"),
    ("causal_conv1d_fwd_triton", "causal_conv1d_bwd_triton"),
    fwd_fake=_fwd_fake,
    bwd_fake=_bwd_fake,
    setup_context=_setup,
    backward=_backward,
)

BACKENDS = Backends("causal_conv1d_fn", cpu="causal_conv1d_fwd", triton="causal_conv1d_fwd_triton")


def causal_conv1d_fn(
    x: Tensor,
    weight: Tensor,
    bias: OptTensor = None,
    seq_idx: OptTensor = None,
    initial_states: OptTensor = None,
    return_final_states: bool = False,
    final_states_out: OptTensor = None,
    activation: str | None = None,
    *,
    backend: Backend = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Causal depthwise conv1d, a drop-in for ``causal_conv1d.causal_conv1d_fn``.

    Args:
        x: (batch, dim, seqlen), float32/float16/bfloat16 (float64 for gradcheck). Any strides.
        weight: (dim, width), x's dtype or float32; any width >= 1.
        bias: optional (dim,), x's dtype or float32.
        seq_idx: optional int32 (batch, seqlen): a tap reading a token of another segment contributes 0
            (packed sequences). Not with initial_states or return_final_states (as upstream).
        initial_states: optional (batch, dim, width - 1) inputs before the first token, x's dtype.
        return_final_states: also return the last width - 1 inputs (batch, dim, width - 1).
        final_states_out: optional preallocated (batch, dim, width - 1) tensor in x's dtype to write
            the final states into (used only with return_final_states, as upstream).
        activation: None, "silu" or "swish" (silu).
        backend: None/"auto", "triton", "cpu" or "reference".

    Returns:
        out (batch, dim, seqlen) in x's dtype, or ``(out, final_states)``. Differentiable in x, weight,
        bias and initial_states, also through the final states.

    Raises:
        TypeError: a tensor argument that is not a torch.Tensor (or None where optional).
        ValueError: a wrong shape, dtype or device, naming the argument; every tensor must be on x's device.
    """
    fn = "causal_conv1d_fn"
    silu = _silu(activation, fn)
    _check(fn, x, weight, bias, seq_idx, initial_states, return_final_states, final_states_out)
    name = BACKENDS.choose(backend, x)
    if name == "reference":
        return causal_conv1d_ref(
            x, weight, bias, seq_idx, initial_states, return_final_states, final_states_out, activation
        )
    if seq_idx is not None and seq_idx.dtype != torch.int32:
        seq_idx = seq_idx.int()
    if x.stride(-1) != 1:
        x = x.contiguous()
    if name == "triton":
        out, final = torch.ops.medkernels.causal_conv1d_fwd_triton(
            x, weight, bias, seq_idx, initial_states, bool(return_final_states), silu
        )
    else:
        out, final = torch.ops.medkernels.causal_conv1d_fwd(
            x, weight, bias, seq_idx, initial_states, bool(return_final_states), silu
        )
    return _finish(out, final, return_final_states, final_states_out)


def _check_index_tensor(fn: str, name: str, t: torch.Tensor, batch: int, x: torch.Tensor) -> None:
    """An integer (batch,) tensor on x's device (values are checked by the caller)."""
    if t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{fn}: {name} must be an int32 (or int64) tensor, got {t.dtype}")
    if t.shape != (batch,):
        raise ValueError(f"{fn}: {name} must have shape (batch,) = ({batch},), got {tuple(t.shape)}")
    if t.device != x.device:
        raise ValueError(f"{fn}: {name} is on {t.device} but x is on {x.device}")


def _check_update(fn, x, conv_state, weight, bias, cache_seqlens, conv_state_indices) -> None:
    """Every malformed causal_conv1d_update call is a TypeError/ValueError naming the argument. ``x`` is
    already (batch, dim, seqlen). Value checks (index ranges, duplicates, negative lengths) need the
    data, so they run in eager mode only, not while torch.compile traces."""
    if x.dim() != 3:
        raise ValueError(f"{fn}: x must be (batch, dim) or (batch, dim, seqlen), got shape {tuple(x.shape)}")
    batch, dim, _ = x.shape
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{fn}: x must be float32, float16 or bfloat16 (or float64), got {x.dtype}")
    if weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        raise ValueError(f"{fn}: weight must be (dim, width) with dim={dim}, got {tuple(weight.shape)}")
    width = weight.shape[1]
    if (
        conv_state.dim() != 3
        or conv_state.shape[1] != dim
        or conv_state.shape[2] < width - 1
        or (conv_state_indices is None and conv_state.shape[0] != batch)
    ):
        rows = "cache_size" if conv_state_indices is not None else f"batch={batch}"
        raise ValueError(
            f"{fn}: conv_state must be ({rows}, dim={dim}, state_len >= width - 1 = {width - 1}), got "
            f"{tuple(conv_state.shape)}"
        )
    for name, t in (("conv_state", conv_state), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{fn}: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if bias is not None and bias.shape != (dim,):
        raise ValueError(f"{fn}: bias must be (dim,) = ({dim},), got {tuple(bias.shape)}")
    for name, t in (("conv_state", conv_state), ("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but x is on {x.device}")
    checking = has_values(x)
    if cache_seqlens is not None:
        _check_index_tensor(fn, "cache_seqlens", cache_seqlens, batch, x)
        if checking and batch and int(cache_seqlens.min()) < 0:
            raise ValueError(f"{fn}: cache_seqlens must be >= 0, got {cache_seqlens.tolist()}")
    if conv_state_indices is not None:
        _check_index_tensor(fn, "conv_state_indices", conv_state_indices, batch, x)
        if checking and batch:
            slots = conv_state.shape[0]
            low, high = int(conv_state_indices.min()), int(conv_state_indices.max())
            if low < -1 or high >= slots:
                raise ValueError(
                    f"{fn}: conv_state_indices must be in [-1, conv_state.shape[0]) = [-1, {slots}) "
                    f"(-1: padding row), got values in [{low}, {high}]"
                )
            used = conv_state_indices[conv_state_indices >= 0]
            unique, counts = torch.unique(used, return_counts=True)
            if bool((counts > 1).any()):
                raise ValueError(
                    f"{fn}: conv_state_indices must not repeat a state row (two batch rows would "
                    f"update the same state in place); repeated: {unique[counts > 1].tolist()}"
                )


def causal_conv1d_update(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: OptTensor = None,
    activation: str | None = None,
    cache_seqlens: OptTensor = None,
    conv_state_indices: OptTensor = None,
) -> Tensor:
    """One or more decoding steps of the causal conv, updating ``conv_state`` in place
    (causal-conv1d's ``causal_conv1d_update``).

    Computed in float32 (float64 for float64 x), like :func:`causal_conv1d_ref`; the new inputs are
    stored in ``conv_state``'s dtype.

    Args:
        x: (batch, dim) or (batch, dim, seqlen) new tokens; float32/float16/bfloat16/float64.
        conv_state: (batch, dim, state_len) with state_len >= width - 1: the latest inputs, oldest
            first; any float dtype, on x's device. With ``conv_state_indices``, a cache
            (cache_size, dim, state_len) whose rows ``conv_state_indices`` are used.
        weight: (dim, width), any float dtype.
        bias: optional (dim,), any float dtype.
        activation: None, "silu" or "swish".
        cache_seqlens: optional int32 (or int64) (batch,), values >= 0: treat each state row as a
            circular buffer; its width - 1 inputs before position ``cache_seqlens % state_len`` are
            read and x is written from there on (of an x longer than state_len, only the last
            state_len tokens are kept).
        conv_state_indices: optional int32 (or int64) (batch,), values in [-1, cache_size): the
            row of ``conv_state`` each batch row uses (continuous batching). -1 is causal-conv1d's
            padding slot: that batch row outputs zeros, whatever the cache holds, and changes no
            state row (not the last one either); the other rows are unaffected. Two batch rows may
            not use the same state row (the in-place update would be ambiguous): ValueError. Index
            values (range, repeats) and ``cache_seqlens >= 0`` are checked in eager mode only, not under torch.compile.

    Returns:
        (batch, dim) or (batch, dim, seqlen), matching x, in x's dtype.

    Raises:
        TypeError: a tensor argument that is not a torch.Tensor.
        ValueError: a wrong shape, dtype, device, index value or activation, naming the argument.
    """
    fn = "causal_conv1d_update"
    silu = _silu(activation, fn)
    _is_tensor(fn, "x", x, optional=False)
    _is_tensor(fn, "conv_state", conv_state, optional=False)
    _is_tensor(fn, "weight", weight, optional=False)
    for name, t in (("bias", bias), ("cache_seqlens", cache_seqlens), ("conv_state_indices", conv_state_indices)):
        _is_tensor(fn, name, t)
    squeeze = x.dim() == 2
    if squeeze:
        x = x.unsqueeze(-1)
    _check_update(fn, x, conv_state, weight, bias, cache_seqlens, conv_state_indices)
    batch, dim, seqlen = x.shape
    width, state_len = weight.shape[1], conv_state.shape[2]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    if conv_state_indices is None:
        state, pad = conv_state, None
    else:
        idx = conv_state_indices.long()
        pad = idx < 0  # padding rows: read slot 0 (or zeros) instead, and mask everything they produce
        slot = idx.clamp(min=0)
        state = conv_state[slot] if conv_state.shape[0] else conv_state.new_zeros(batch, dim, state_len)
    if cache_seqlens is None or state_len == 0:
        ext = torch.cat([state, x], dim=-1)  # (batch, dim, state_len + seqlen), the promoted dtype: exact
        new_state = ext[..., ext.shape[-1] - state_len :].to(conv_state.dtype)
    else:
        pos = cache_seqlens.long()[:, None]
        read = torch.remainder(torch.arange(-(width - 1), 0, device=x.device)[None] + pos, state_len)
        ext = torch.cat([state.gather(2, read[:, None].expand(-1, dim, -1)), x], dim=-1)
        # Only the last min(seqlen, state_len) tokens survive; writing all of them would scatter to
        # repeated positions, whose winner scatter does not define.
        keep = min(seqlen, state_len)
        write = torch.remainder(torch.arange(seqlen - keep, seqlen, device=x.device)[None] + pos, state_len)
        new_state = state.scatter(2, write[:, None].expand(-1, dim, -1), x[..., seqlen - keep :].to(state.dtype))
    ext = ext[..., ext.shape[-1] - (width - 1 + seqlen) :].to(acc)  # the inputs the seqlen outputs read
    if seqlen:
        out = F.conv1d(ext, weight.to(acc)[:, None], None if bias is None else bias.to(acc), groups=dim)
    else:  # F.conv1d rejects an input shorter than the kernel
        out = ext.new_zeros(batch, dim, 0)
    if silu:
        out = F.silu(out)
    if pad is not None:
        out = out.masked_fill(pad[:, None, None], 0.0)  # zeros even if slot 0 holds inf/nan
    with torch.no_grad():
        if pad is None:
            conv_state.copy_(new_state)
        elif conv_state.shape[0]:
            # Without data-dependent shapes (torch.compile): a padding row writes to the row the first
            # real batch row writes, the very same values, so the repeated index is harmless; when
            # every row pads, it writes slot 0's own content back.
            real = ~pad
            first = torch.argmax(real.to(torch.int32)).reshape(1)  # a tensor index: no .item() (compile)
            any_real = real.any()
            fill = torch.where(any_real, new_state.index_select(0, first), conv_state[:1])  # (1, dim, state_len)
            target = torch.where(pad, torch.where(any_real, slot.index_select(0, first), 0), slot)
            conv_state.index_copy_(0, target, torch.where(pad[:, None, None], fill, new_state))
    out = out.to(x.dtype)
    return out.squeeze(-1) if squeeze else out
