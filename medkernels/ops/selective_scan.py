"""Selective scan: the state-space recurrence of Mamba.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv 2312.00752.
``selective_scan_fn`` has mamba_ssm's signature, shapes, dtypes and return conventions
(mamba_ssm.ops.selective_scan_interface), so it is a drop-in replacement, and adds:

* ``initial_state`` (batch, dim, dstate), with its gradient;
* a gradient through ``last_state`` (mamba_ssm ignores it);
* CPU kernels, forward and backward (mamba_ssm has none), a deterministic backward, any dstate,
  and torch.compile(fullgraph=True) support (the op is a registered custom op with fake
  implementations and autograd).

Math, in float32 (float64 for float64 inputs), per batch b and channel d:
    dt = softplus(delta + delta_bias) (or without softplus);  dA_t = exp(dt_t * A)
    h_t = dA_t * h_{t-1} + dt_t * u_t * B_t,  h_{-1} = initial_state (or 0)
    y_t = <h_t, C_t>;  out = (y + D * u) * silu(z)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._typing import Backend, OptTensor, Tensor
from . import _library
from ._backend import Backends

__all__ = ["selective_scan_fn", "selective_scan_ref"]

_OP = "selective_scan_fn"
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Tokens between saved states (memory: batch * dim * dstate * seqlen / chunk); None picks
# _cpu_chunk(dstate). Tests set small values to cross many chunk boundaries.
_CPU_CHUNK: int | None = None


def _cpu_chunk(dstate: int) -> int:
    """The CPU kernel's checkpoint interval: the backward recomputes one chunk at a time, keeping two
    (chunk, dstate) float32 buffers, and reads each (batch, channel) row's sequences in chunk-long
    runs. Longer runs stream better from memory; 8192 floats per buffer keeps them in L2:
    512 tokens for dstate 16, 128 for dstate 64 (never below 128 or above 1024)."""
    chunk = 1024
    while chunk > 128 and chunk * dstate > 8192:
        chunk //= 2
    return chunk


# ---------------------------------------------------------------------------------------------
# Input checks shared by every backend and the reference.


def _param_dtype(u: torch.Tensor) -> torch.dtype:
    """The dtype of A, fixed B/C, D, delta_bias, states: float32 (float64 for float64 inputs)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _check_bc(
    fn: str,
    name: str,
    t: torch.Tensor,
    batch: int,
    dim: int,
    dstate: int,
    seqlen: int,
    u: torch.Tensor,
    pdtype: torch.dtype,
) -> None:
    if t.dim() == 2:
        if tuple(t.shape) != (dim, dstate):
            raise ValueError(
                f"{fn}: fixed {name} must have shape (dim, dstate) = {(dim, dstate)}, got {tuple(t.shape)}"
            )
        if t.dtype != pdtype:
            raise ValueError(f"{fn}: fixed {name} must have dtype {pdtype} (like A), got {t.dtype}")
    elif t.dim() in (3, 4):
        groups = 1 if t.dim() == 3 else t.shape[1]
        want = (batch, dstate, seqlen) if t.dim() == 3 else (batch, groups, dstate, seqlen)
        if t.dim() == 4 and (groups < 1 or dim % groups != 0):
            raise ValueError(
                f"{fn}: {name} has {groups} groups (dim 1 of (batch, groups, dstate, seqlen)), "
                f"which must divide dim={dim}"
            )
        if tuple(t.shape) != want:
            layout = "(batch, dstate, seqlen)" if t.dim() == 3 else "(batch, groups, dstate, seqlen)"
            raise ValueError(f"{fn}: variable {name} must have shape {layout} = {want}, got {tuple(t.shape)}")
        if t.dtype != u.dtype:
            raise ValueError(f"{fn}: variable {name} must have the dtype of u ({u.dtype}), got {t.dtype}")
    else:
        raise ValueError(
            f"{fn}: {name} must be (dim, dstate), (batch, dstate, seqlen) or "
            f"(batch, groups, dstate, seqlen), got shape {tuple(t.shape)}"
        )


def _check_inputs(fn: str, u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    """Raises TypeError/ValueError naming the argument for every malformed input."""
    named = {
        "u": u,
        "delta": delta,
        "A": A,
        "B": B,
        "C": C,
        "D": D,
        "z": z,
        "delta_bias": delta_bias,
        "initial_state": initial_state,
    }
    for name, t in named.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t is None and name in ("u", "delta", "A", "B", "C"):
            raise TypeError(f"{fn}: {name} is required, got None")
    if A.is_complex():
        raise NotImplementedError(f"{fn}: complex A (and its interleaved B/C) is not supported yet; use real A")
    if u.dim() != 3:
        raise ValueError(f"{fn}: u must have shape (batch, dim, seqlen), got {tuple(u.shape)}")
    if u.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{fn}: u must be float32, float16 or bfloat16 (or float64), got {u.dtype}")
    for name, t in named.items():
        if t is not None and t.device != u.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but u is on {u.device}; all inputs must share a device")
    batch, dim, seqlen = u.shape
    for name, t in (("delta", delta), ("z", z)):
        if t is None:
            continue
        if t.shape != u.shape:
            raise ValueError(
                f"{fn}: {name} must have the shape of u (batch, dim, seqlen) = {tuple(u.shape)}, got {tuple(t.shape)}"
            )
        if t.dtype != u.dtype:
            raise ValueError(f"{fn}: {name} must have the dtype of u ({u.dtype}), got {t.dtype}")
    pdtype = _param_dtype(u)
    if A.dim() != 2 or A.shape[0] != dim or A.shape[1] < 1:
        raise ValueError(f"{fn}: A must have shape (dim, dstate) with dim={dim} and dstate >= 1, got {tuple(A.shape)}")
    if A.dtype != pdtype:
        raise ValueError(f"{fn}: A must be {pdtype} for {u.dtype} inputs, got {A.dtype}")
    dstate = A.shape[1]
    _check_bc(fn, "B", B, batch, dim, dstate, seqlen, u, pdtype)
    _check_bc(fn, "C", C, batch, dim, dstate, seqlen, u, pdtype)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is None:
            continue
        if tuple(t.shape) != (dim,):
            raise ValueError(f"{fn}: {name} must have shape (dim,) = {(dim,)}, got {tuple(t.shape)}")
        if t.dtype != pdtype:
            raise ValueError(f"{fn}: {name} must be {pdtype} (like A), got {t.dtype}")
    if initial_state is not None:
        if tuple(initial_state.shape) != (batch, dim, dstate):
            raise ValueError(
                f"{fn}: initial_state must have shape (batch, dim, dstate) = {(batch, dim, dstate)}, "
                f"got {tuple(initial_state.shape)}"
            )
        if initial_state.dtype != pdtype:
            raise ValueError(
                f"{fn}: initial_state must be {pdtype} (the dtype of last_state), got {initial_state.dtype}"
            )


# ---------------------------------------------------------------------------------------------
# The reference: mamba_ssm's selective_scan_ref, plus initial_state.


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: OptTensor = None,
    z: OptTensor = None,
    delta_bias: OptTensor = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: OptTensor = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Pure-PyTorch selective scan: the oracle every backend is tested against.

    The same math and structure as mamba_ssm's ``selective_scan_ref``: it materialises
    exp(delta * A) and delta * B * u as (batch, dim, seqlen, dstate) tensors and loops over the
    sequence. One change: steps are taken with ``unbind`` rather than indexing, which keeps its
    autograd linear in seqlen (indexing makes every step's backward allocate a full
    (batch, dim, seqlen, dstate) gradient: 135 s instead of ~3 s at batch 2, dim 768, seqlen 1024
    on 2 CPU cores). The gate's SiLU is taken in float32, as the CUDA kernel does.

    Args: as :func:`selective_scan_fn` (without ``backend``).

    Returns:
        out (batch, dim, seqlen) in u's dtype, or ``(out, last_state)`` with last_state
        (batch, dim, dstate) float32 (float64 for float64 inputs).
    """
    _check_inputs("selective_scan_ref", u, delta, A, B, C, D, z, delta_bias, initial_state)
    dtype_in = u.dtype
    acc = _param_dtype(u)
    u = u.to(acc)
    delta = delta.to(acc)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(acc)
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    B = B.to(acc)
    C = C.to(acc)
    x = A.new_zeros((batch, dim, dstate)) if initial_state is None else initial_state.to(acc)
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 2:
        deltaB_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    elif B.dim() == 3:
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)  # (b, g, n, l) -> (b, d, n, l), d // (dim/g) = g
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    if C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    C_steps = C.unbind(-1) if C.dim() >= 3 else None
    ys = []
    for i, (dA_i, dBu_i) in enumerate(zip(deltaA.unbind(2), deltaB_u.unbind(2))):
        x = dA_i * x + dBu_i
        if C_steps is None:
            y = torch.einsum("bdn,dn->bd", x, C)
        elif C.dim() == 3:
            y = torch.einsum("bdn,bn->bd", x, C_steps[i])
        else:
            y = torch.einsum("bdn,bdn->bd", x, C_steps[i])
        ys.append(y)
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(batch, dim, 0)
    out = y if D is None else y + u * D[:, None].to(acc)
    if z is not None:
        out = out * F.silu(z.to(acc))
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


# ---------------------------------------------------------------------------------------------
# The compiled op: fake implementations and autograd.


def _acc_of(u: torch.Tensor) -> torch.dtype:
    return _param_dtype(u)


def _fwd_fake(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_size):
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    n_chunks = (seqlen + chunk_size - 1) // chunk_size
    acc = _acc_of(u)
    return (
        u.new_empty((batch, dim, seqlen)),
        u.new_empty((batch, dim, dstate), dtype=acc),
        u.new_empty((batch, dim, n_chunks, dstate), dtype=acc),
    )


def _bwd_fake(
    grad_out,
    grad_last_state,
    u,
    delta,
    A,
    B,
    C,
    D,
    z,
    delta_bias,
    initial_state,
    checkpoints,
    delta_softplus,
    chunk_size,
    deterministic=False,
):
    acc = _acc_of(u)

    def like(t):
        return u.new_empty((0,), dtype=acc) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)

    return (
        torch.empty_like(u, memory_format=torch.contiguous_format),
        torch.empty_like(u, memory_format=torch.contiguous_format),
        like(A),
        like(B),
        like(C),
        like(D),
        like(z),
        like(delta_bias),
        like(initial_state),
    )


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk_size = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, output[2])
    ctx.delta_softplus = delta_softplus
    ctx.chunk_size = chunk_size
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, bwd_op, grad_out, grad_last_state, _grad_checkpoints):
    u, delta, A, B, C, D, z, delta_bias, initial_state, checkpoints = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(u)
    elif grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial = bwd_op(
        grad_out,
        grad_last_state,
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        initial_state,
        checkpoints,
        ctx.delta_softplus,
        ctx.chunk_size,
        # torch.use_deterministic_algorithms: the CUDA kernel then sums dB/dC in a fixed order (the CPU kernels
        # always do); passed in because the stable ABI cannot read torch's global context.
        torch.are_deterministic_algorithms_enabled(),
    )
    return (
        du,
        ddelta,
        dA,
        dB,
        dC,
        dD if D is not None else None,
        dz if z is not None else None,
        ddelta_bias if delta_bias is not None else None,
        dinitial if initial_state is not None else None,
        None,
        None,
    )


if _library.HAS_TRITON:
    from typing import Optional

    from medkernels.triton import selective_scan as _tss

    def _f32(t):
        return None if t is None else t.float().contiguous()

    def _seq(t):  # unit stride along seqlen, storage dtype kept (the kernel converts on load)
        return None if t is None else (t if t.stride(-1) == 1 else t.contiguous())

    @torch.library.custom_op("medkernels::selective_scan_fwd_triton", mutates_args=())
    def _fwd_triton(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor],
        z: Optional[torch.Tensor],
        delta_bias: Optional[torch.Tensor],
        initial_state: Optional[torch.Tensor],
        delta_softplus: bool,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, last, ckpt = _tss.forward(
            _seq(u),
            _seq(delta),
            _f32(A),
            _seq(B) if B.dim() > 2 else _f32(B),
            _seq(C) if C.dim() > 2 else _f32(C),
            _f32(D),
            _seq(z),
            _f32(delta_bias),
            _f32(initial_state),
            delta_softplus,
            chunk_size,
        )
        acc = _acc_of(u)
        return out.to(u.dtype), last.to(acc), ckpt.to(acc)

    @torch.library.custom_op("medkernels::selective_scan_bwd_triton", mutates_args=())
    def _bwd_triton(
        grad_out: torch.Tensor,
        grad_last_state: Optional[torch.Tensor],
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor],
        z: Optional[torch.Tensor],
        delta_bias: Optional[torch.Tensor],
        initial_state: Optional[torch.Tensor],
        checkpoints: torch.Tensor,
        delta_softplus: bool,
        chunk_size: int,
        deterministic: bool = False,
    ) -> tuple[
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
    ]:
        du, ddelta, dz, dB, dC, parts, dd, dbias, dinit = _tss.backward(
            _seq(grad_out),
            _f32(grad_last_state),
            _seq(u),
            _seq(delta),
            _f32(A),
            _seq(B) if B.dim() > 2 else _f32(B),
            _seq(C) if C.dim() > 2 else _f32(C),
            _f32(D),
            _seq(z),
            _f32(delta_bias),
            checkpoints.float().contiguous(),
            delta_softplus,
            chunk_size,
        )
        empty = u.new_empty((0,), dtype=_acc_of(u))

        def bc_grad(grad, part, t):
            return grad.view(t.shape).to(t.dtype) if t.dim() > 2 else part.sum(0).to(t.dtype)

        return (
            du.to(u.dtype),
            ddelta.to(u.dtype),
            parts[:, :, 0].sum(0).to(A.dtype),
            bc_grad(dB, parts[:, :, 1], B),
            bc_grad(dC, parts[:, :, 2], C),
            empty.clone() if D is None else dd.sum(0).to(D.dtype),
            empty.clone() if z is None else dz.to(z.dtype),
            empty.clone() if delta_bias is None else dbias.sum(0).to(delta_bias.dtype),
            empty.clone() if initial_state is None else dinit.to(initial_state.dtype),
        )


_library.register_kernel(
    _OP,
    ("selective_scan_fwd", "selective_scan_bwd"),
    ("selective_scan_fwd_triton", "selective_scan_bwd_triton"),
    fwd_fake=_fwd_fake,
    bwd_fake=_bwd_fake,
    setup_context=_setup_context,
    backward=_backward,
)


# ---------------------------------------------------------------------------------------------
# Backends.

# The CUDA kernel's chunk (csrc/include/medkernels/cuda/selective_scan.h: 128 threads x 8 tokens).
_CUDA_CHUNK = 1024
_CUDA_MAX_STATE = 256
_TRITON_MAX_STATE = 64  # medkernels.triton.selective_scan.MAX_STATE (that module needs triton)


def _cuda_limit(u, A=None, *rest) -> str | None:  # deterministic mode: see csrc/cuda
    if A is not None and A.shape[1] > _CUDA_MAX_STATE:
        return f"the CUDA kernel supports dstate up to {_CUDA_MAX_STATE}, got {A.shape[1]}"
    return None


def _variable_bc(u, A=None, B=None, C=None, *rest) -> bool:
    """The Triton backward sums variable dB/dC with atomics."""
    return any(t is not None and t.dim() > 2 for t in (B, C))


def _triton_limit(u, A=None, *rest) -> str | None:
    if A is not None and A.shape[1] > _TRITON_MAX_STATE:
        return (
            f"the Triton kernels support dstate up to {_TRITON_MAX_STATE} (the CUDA kernel up to "
            f"{_CUDA_MAX_STATE}), got {A.shape[1]}"
        )
    return None


BACKENDS = Backends(
    _OP,
    cpu="selective_scan_fwd",
    cuda="selective_scan_fwd",
    triton="selective_scan_fwd_triton",
    triton_atomics=_variable_bc,
    limits={"cuda": _cuda_limit, "triton": _triton_limit},
)


def selective_scan_fn(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: OptTensor = None,
    z: OptTensor = None,
    delta_bias: OptTensor = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: OptTensor = None,
    backend: Backend = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Selective scan, a drop-in for ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``.

    Args:
        u: (batch, dim, seqlen), float32, float16 or bfloat16 (float64 also works: the CPU kernel
            then computes in float64, for gradcheck). Any strides; unit stride along seqlen avoids
            a copy.
        delta: (batch, dim, seqlen), dtype of u.
        A: (dim, dstate) float32 (float64 for float64 inputs). Any dstate >= 1.
        B: fixed (dim, dstate) in A's dtype, or variable (batch, dstate, seqlen) or grouped
            (batch, groups, dstate, seqlen) in u's dtype; channel d uses group d // (dim / groups).
        C: as B, independently fixed, variable or grouped.
        D: optional (dim,) skip weight, A's dtype.
        z: optional (batch, dim, seqlen) gate, u's dtype: out is multiplied by silu(z).
        delta_bias: optional (dim,) added to delta before the softplus, A's dtype.
        delta_softplus: apply softplus (threshold 20) to delta + delta_bias.
        return_last_state: also return the state after the last step.
        initial_state: optional (batch, dim, dstate) state before the first step, A's dtype
            (beyond mamba_ssm; differentiable).
        backend: None/"auto", or force "cuda", "triton", "cpu" or "reference". The environment
            variable MEDKERNELS_BACKEND overrides the automatic choice.

    Returns:
        out (batch, dim, seqlen) in u's dtype; with ``return_last_state``, ``(out, last_state)``
        where last_state is (batch, dim, dstate) float32 (float64 for float64 inputs). Gradients
        flow to every tensor input, through both outputs.

    Non-finite inputs (an inf or NaN in u, delta, delta_bias, ...) give the reference's result on every
    backend, NaN where it has NaN and +-inf where it has +-inf: a decay that underflows is exactly 0
    there, as torch.exp. One exception: a timestep of -inf without softplus (a decay of exp(+inf)),
    where the GPU backends' parallel scans (Triton, CUDA) combine the infinite factors in another order
    and may give NaN for the reference's +-inf.

    Raises:
        TypeError, ValueError: malformed inputs, naming the argument and what was expected.
        NotImplementedError: complex A.
        BackendUnavailableError: a forced backend cannot run these inputs.
    """
    _check_inputs(_OP, u, delta, A, B, C, D, z, delta_bias, initial_state)
    name = BACKENDS.choose(backend, u, A, B, C)
    if name == "reference":
        return selective_scan_ref(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state=initial_state
        )
    if u.stride(-1) != 1:
        u = u.contiguous()
    if delta.stride(-1) != 1:
        delta = delta.contiguous()
    if z is not None and z.stride(-1) != 1:
        z = z.contiguous()
    if name == "triton":
        from medkernels.triton.selective_scan import chunk_len

        op, chunk = torch.ops.medkernels.selective_scan_fwd_triton, chunk_len(A.shape[1])
    elif name == "cuda":
        op, chunk = torch.ops.medkernels.selective_scan_fwd, _CUDA_CHUNK
    else:
        op, chunk = torch.ops.medkernels.selective_scan_fwd, _CPU_CHUNK or _cpu_chunk(A.shape[-1])
    out, last_state, _ = op(u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus), chunk)
    return (out, last_state) if return_last_state else out
