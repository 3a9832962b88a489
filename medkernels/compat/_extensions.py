"""The compiled extensions of mamba_ssm and causal-conv1d, on medkernels' kernels.

``selective_scan_cuda`` (mamba_ssm 1.x-2.x) and ``causal_conv1d_cuda`` (causal-conv1d 1.4-1.7) are the
pybind11 modules their Python packages call; serving them lets the REAL packages, installed without
their CUDA builds (``MAMBA_SKIP_CUDA_BUILD=TRUE``, ``CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE``), run their fast
paths (``selective_scan_fn``, ``mamba_inner_fn``, ``causal_conv1d_fn``, ``Mamba(use_fast_path=True)``) on
medkernels' CPU, Triton or CUDA kernels (:mod:`medkernels.ops`, whichever backend it picks).

The argument lists and return tuples are upstream's. Differences: they run on CPU too; errors are
TypeError/ValueError naming the argument (upstream: RuntimeError from TORCH_CHECK); the backward functions
recompute the forward through medkernels' autograd (one extra forward pass; upstream's kernels recompute
it too, chunk by chunk; inside a ``torch.library.custom_op``, where autograd does not record, in a worker
thread) or, for the causal conv, compute the gradients in PyTorch; the opaque scan state ``x`` holds only the
last state (see :func:`selective_scan_fwd`).
"""

from __future__ import annotations

import concurrent.futures

import torch
import torch.nn.functional as F

from medkernels import ops

__all__ = [
    "selective_scan_fwd",
    "selective_scan_bwd",
    "causal_conv1d_fwd",
    "causal_conv1d_bwd",
    "causal_conv1d_update",
    "MODULES",
]

MODULES = ("selective_scan_cuda", "causal_conv1d_cuda")


def _tensor(fn: str, name: str, t, optional: bool = False) -> None:
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        kind = "None or a torch.Tensor" if optional else "a torch.Tensor"
        raise TypeError(f"{fn}: {name} must be {kind}, got {type(t).__name__}")


def _grads(outputs, inputs, grad_outputs):
    """Gradients of ``outputs`` w.r.t. the non-None ``inputs`` (None kept in place)."""
    needed = [t for t in inputs if t is not None]
    found = iter(torch.autograd.grad(outputs, needed, grad_outputs, allow_unused=True))
    result = []
    for t in inputs:
        if t is None:
            result.append(None)
            continue
        g = next(found)
        result.append(torch.zeros_like(t) if g is None else g)
    return result


def _leaf(t):
    return None if t is None else t.detach().requires_grad_(t.is_floating_point() or t.is_complex())


def _gate(out: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    acc = torch.float64 if out.dtype == torch.float64 else torch.float32
    return (out.to(acc) * F.silu(z.to(acc))).to(out.dtype)


# ---------------------------------------------------------------------------------------------------
# selective_scan_cuda


def selective_scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """``selective_scan_cuda.fwd``: the selective scan forward, as mamba_ssm's extension returns it.

    Args:
        u, delta: (batch, dim, seqlen).
        A: (dim, dstate) float32 (complex A: NotImplementedError, as :func:`medkernels.ops.selective_scan_fn`).
        B, C: (dim, dstate) fixed, or (batch, groups, dstate, seqlen) / (batch, dstate, seqlen) variable.
        D, delta_bias: optional (dim,) float32.
        z: optional (batch, dim, seqlen) gate.
        delta_softplus: softplus on delta + delta_bias.

    Returns:
        ``[out, x]``, or ``[out, x, out_z]`` with ``z``: out = y + D * u before the gate (batch, dim, seqlen),
        out_z = out * silu(z), and x the scan state (batch, dim, 1, 2 * dstate) float32 of which
        ``x[:, :, -1, 1::2]`` is the last state (batch, dim, dstate), the only part callers read.
    """
    fn = "selective_scan_cuda.fwd"
    _tensor(fn, "z", z, optional=True)
    out, last = ops.selective_scan_fn(u, delta, A, B, C, D, None, delta_bias, bool(delta_softplus), True)
    x = last.new_zeros((*last.shape[:2], 1, 2 * last.shape[2]))
    x[:, :, 0, 1::2] = last
    result = [out, x]
    if z is not None:
        if z.shape != u.shape:
            raise ValueError(f"{fn}: z must be shaped like u {tuple(u.shape)}, got {tuple(z.shape)}")
        result.append(_gate(out, z))
    return result


def selective_scan_bwd(
    u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz=None, delta_softplus=False, recompute_out_z=False
):
    """``selective_scan_cuda.bwd``: the gradients, as mamba_ssm's extension returns them.

    Args:
        u, delta, A, B, C, D, z, delta_bias: the forward's inputs (layouts as :func:`selective_scan_fwd`).
        dout: (batch, dim, seqlen) gradient of the forward's output (of out_z when ``z`` was given).
        x: the scan state the forward returned (not needed: the forward is recomputed).
        out: the forward's pre-gate output (used with ``recompute_out_z``; recomputed when None).
        dz: optional preallocated (batch, dim, seqlen) buffer the gate's gradient is written into.
        delta_softplus: as in the forward.
        recompute_out_z: also return out * silu(z).

    Returns:
        ``[du, ddelta, dA, dB, dC, dD, ddelta_bias]``, then dz when ``z`` was given, then out_z with
        ``recompute_out_z``; dD and ddelta_bias are None when D and delta_bias were.
    """
    fn = "selective_scan_cuda.bwd"
    _tensor(fn, "u", u)
    _tensor(fn, "dout", dout)
    _tensor(fn, "z", z, optional=True)
    _tensor(fn, "dz", dz, optional=True)
    if dout.shape != u.shape:
        raise ValueError(f"{fn}: dout must be shaped like u {tuple(u.shape)}, got {tuple(dout.shape)}")
    if dz is not None and dz.shape != u.shape:
        raise ValueError(f"{fn}: dz must be shaped like u {tuple(u.shape)}, got {tuple(dz.shape)}")
    softplus = bool(delta_softplus)

    def vjp():
        inputs = [_leaf(t) for t in (u, delta, A, B, C, D, z, delta_bias)]
        with torch.enable_grad():
            y = ops.selective_scan_fn(*inputs, softplus)
            if y.grad_fn is None:
                return None
            return _grads(y, inputs, dout.to(y.dtype))

    grads = vjp()
    if grads is None:
        # Called inside a torch.library.custom_op (as causal-conv1d 1.6+ wraps its extension): autograd is
        # excluded there in this thread's dispatch state, so the recomputation runs in a fresh thread.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            grads = pool.submit(vjp).result()
    du, ddelta, dA, dB, dC, dD, dz_new, ddelta_bias = grads
    result = [du, ddelta, dA, dB, dC, dD, ddelta_bias]
    if z is not None:
        if dz is not None:
            dz.copy_(dz_new)
            dz_new = dz
        result.append(dz_new)
    if recompute_out_z:
        if z is None:
            result.append(None)
        else:
            if out is None:
                out = ops.selective_scan_fn(u, delta, A, B, C, D, None, delta_bias, bool(delta_softplus))
            result.append(_gate(out, z))
    return result


# ---------------------------------------------------------------------------------------------------
# causal_conv1d_cuda (1.4-1.5.0: results returned; 1.5.2-1.7: written into preallocated outputs)


def _activation(silu) -> str | None:
    return "silu" if silu else None


def _seq_idx(seq_idx):
    if isinstance(seq_idx, torch.Tensor) and seq_idx.dtype != torch.int32:
        return seq_idx.int()
    return seq_idx


def causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, *rest):
    """``causal_conv1d_cuda.causal_conv1d_fwd``, both upstream signatures.

    1.4-1.5.0: ``(x, weight, bias, seq_idx, initial_states, final_states_out, silu_activation) -> out``;
    1.5.2-1.7: ``(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu_activation) -> None``
    (writes ``out``). x (batch, dim, seqlen), weight (dim, width), bias (dim,), seq_idx int32 (batch, seqlen),
    initial_states (batch, dim, width - 1); ``final_states_out`` (batch, dim, width - 1), when given,
    receives the last width - 1 inputs. Any strides (upstream: contiguous or channel-last).
    """
    fn = "causal_conv1d_cuda.causal_conv1d_fwd"
    if len(rest) == 2:
        out_buf, (final_states_out, silu) = None, rest
    elif len(rest) == 3:
        out_buf, final_states_out, silu = rest
        _tensor(fn, "out", out_buf)
    else:
        raise TypeError(f"{fn}: expected 7 (causal-conv1d 1.4-1.5.0) or 8 (1.5.2-1.7) arguments, got {5 + len(rest)}")
    _tensor(fn, "final_states_out", final_states_out, optional=True)
    want_final = final_states_out is not None
    res = ops.causal_conv1d_fn(x, weight, bias, _seq_idx(seq_idx), initial_states, want_final, None, _activation(silu))
    out, final = res if want_final else (res, None)
    if want_final:
        final_states_out.copy_(final)
    if out_buf is None:
        return out
    out_buf.copy_(out)
    return None


def _conv_vjp(x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu):
    """The gradients of :func:`medkernels.ops.causal_conv1d_ref`, written out (no autograd: causal-conv1d
    1.6+ calls the backward inside a ``torch.library.custom_op``, where autograd does not record).

    Computed in float32 (float64 for float64 x). Returns ``(dx, dweight, dbias, dinitial_states)``, dbias and
    dinitial_states None without bias / initial_states.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    left = initial_states.to(acc) if initial_states is not None else x.new_zeros(batch, dim, width - 1, dtype=acc)
    ext = torch.cat([left, x.to(acc)], dim=-1)  # (batch, dim, width - 1 + seqlen)
    w = weight.to(acc)
    keeps = []
    pre = x.new_zeros(batch, dim, seqlen, dtype=acc)
    if bias is not None:
        pre = pre + bias.to(acc)[:, None]
    for k in range(width):
        keep = None
        if seq_idx is not None:  # a tap reading a token of another segment contributes 0
            src = torch.arange(seqlen, device=x.device) - (width - 1) + k
            keep = ((src < 0)[None] | (seq_idx[:, src.clamp(min=0)] == seq_idx))[:, None, :].to(acc)
        keeps.append(keep)
        tap = ext[..., k : k + seqlen]
        pre = pre + w[:, k, None] * (tap if keep is None else tap * keep)
    g = dout.to(acc)
    if silu:
        sig = torch.sigmoid(pre)
        g = g * sig * (1 + pre * (1 - sig))
    dext = torch.zeros_like(ext)
    dw = torch.empty_like(w)
    for k in range(width):
        gk = g if keeps[k] is None else g * keeps[k]
        dext[..., k : k + seqlen] += w[:, k, None] * gk
        dw[:, k] = (gk * ext[..., k : k + seqlen]).sum(dim=(0, 2))
    if dfinal_states is not None and width > 1:
        dext[..., ext.shape[-1] - (width - 1) :] += dfinal_states.to(acc)
    db = None if bias is None else g.sum(dim=(0, 2))
    dinit = None if initial_states is None else dext[..., : width - 1].to(initial_states.dtype)
    return dext[..., width - 1 :].to(x.dtype), dw, db, dinit


def causal_conv1d_bwd(x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, *rest):
    """``causal_conv1d_cuda.causal_conv1d_bwd``, both upstream signatures.

    1.4-1.5.0: ``(..., dx, return_dinitial_states, silu_activation) -> [dx, dweight, dbias, dinitial_states]``
    (dweight and dbias float32, as upstream accumulates them); 1.5.2-1.7: ``(..., dx, dweight, dbias,
    dinitial_states, silu_activation) -> None``, writing the preallocated gradients. ``dx`` may be None
    (a new tensor is returned) or a preallocated (batch, dim, seqlen) buffer. The gradients are computed
    in PyTorch (:func:`_conv_vjp`), not by autograd, which does not record inside the custom op
    causal-conv1d 1.6+ calls this from.
    """
    fn = "causal_conv1d_cuda.causal_conv1d_bwd"
    if len(rest) == 2:
        (return_dinit, silu), dweight_buf, dbias_buf, dinit_buf, new_api = rest, None, None, None, False
    elif len(rest) == 4:
        dweight_buf, dbias_buf, dinit_buf, silu = rest
        return_dinit, new_api = dinit_buf is not None, True
        _tensor(fn, "dweight", dweight_buf)
    else:
        raise TypeError(f"{fn}: expected 10 (causal-conv1d 1.4-1.5.0) or 12 (1.5.2-1.7) arguments, got {8 + len(rest)}")
    _tensor(fn, "x", x)
    _tensor(fn, "dout", dout)
    _tensor(fn, "dfinal_states", dfinal_states, optional=True)
    _tensor(fn, "dx", dx, optional=True)
    _tensor(fn, "weight", weight)
    _tensor(fn, "bias", bias, optional=True)
    _tensor(fn, "initial_states", initial_states, optional=True)
    _tensor(fn, "seq_idx", seq_idx, optional=True)
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"{fn}: x must be (batch, dim, seqlen) and weight (dim, width), got {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    batch, dim, seqlen = x.shape
    state_shape = (batch, dim, weight.shape[1] - 1)
    for name, t, shape in (
        ("dout", dout, tuple(x.shape)),
        ("bias", bias, (dim,)),
        ("initial_states", initial_states, state_shape),
        ("dfinal_states", dfinal_states, state_shape),
        ("seq_idx", seq_idx, (batch, seqlen)),
    ):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{fn}: {name} must be {shape}, got {tuple(t.shape)}")
    ddx, ddw, ddb, ddinit = _conv_vjp(x, weight, bias, _seq_idx(seq_idx), initial_states, dout, dfinal_states, silu)
    if dx is not None:
        dx.copy_(ddx)
        ddx = dx
    if new_api:
        dweight_buf.copy_(ddw)
        if dbias_buf is not None and ddb is not None:
            dbias_buf.copy_(ddb)
        if dinit_buf is not None and ddinit is not None:
            dinit_buf.copy_(ddinit)
        return None
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return [
        ddx,
        ddw.to(acc),
        None if ddb is None else ddb.to(acc),
        ddinit if return_dinit else None,
    ]


def causal_conv1d_update(x, conv_state, weight, bias, *rest):
    """``causal_conv1d_cuda.causal_conv1d_update``, both upstream signatures.

    1.4-1.5.0: ``(x, conv_state, weight, bias, silu_activation[, cache_seqlens[, conv_state_indices]]) -> out``;
    1.5.2-1.7: ``(x, conv_state, weight, bias, out, silu_activation, cache_seqlens, conv_state_indices) -> None``.
    x (batch, dim) or (batch, dim, seqlen); ``conv_state`` (batch, dim, state_len) is updated in place
    (see :func:`medkernels.ops.causal_conv1d_update`).
    """
    fn = "causal_conv1d_cuda.causal_conv1d_update"
    if rest and isinstance(rest[0], bool):
        out_buf = None
        silu, cache_seqlens, indices = (*rest, None, None)[:3]
    elif len(rest) in (2, 3, 4):
        out_buf, silu, cache_seqlens, indices = (*rest, None, None)[:4]
        _tensor(fn, "out", out_buf)
    else:
        raise TypeError(f"{fn}: expected (x, conv_state, weight, bias, silu_activation, ...) or (..., out, silu, ...)")
    out = ops.causal_conv1d_update(x, conv_state, weight, bias, _activation(silu), cache_seqlens, indices)
    if out_buf is None:
        return out
    out_buf.copy_(out)
    return None


# ---------------------------------------------------------------------------------------------------
# The provider interface (medkernels.compat._finder).


def has_module(fullname: str, config) -> bool:
    return fullname in MODULES


def is_package(fullname: str, config) -> bool:
    return False


def create_module(fullname: str, config):
    return None


def build(module, fullname: str, config) -> None:
    if fullname == "selective_scan_cuda":
        module.fwd = selective_scan_fwd
        module.bwd = selective_scan_bwd
        module.__doc__ = "mamba_ssm's selective_scan_cuda extension, served by medkernels.compat."
    else:
        module.causal_conv1d_fwd = causal_conv1d_fwd
        module.causal_conv1d_bwd = causal_conv1d_bwd
        module.causal_conv1d_update = causal_conv1d_update
        module.__doc__ = "causal-conv1d's causal_conv1d_cuda extension, served by medkernels.compat."
