"""Multi-order selective scan: the group Point-SSM of PointMamba2.

Zhang, Yang, Li, "PointMamba2" (hierarchical point-cloud SSM), MICCAI 2025, arXiv 2504.13015. Its
group Point-SSM block scans one sequence of point features along K orderings (x-, y-, z-coordinate
order, inside-out, and their reverses) with a separate SSM per ordering and sums the results in the
original point order. The official code permutes every tensor K times and runs K scans; here one
op walks each ordering through its index (forward and backward), so no permuted copy of u or delta
exists.

Math, per batch b, channel d and ordering k (with o = orders[b, k], all in float32; float64 for
float64 inputs), each ordering a selective scan (Gu & Dao, arXiv 2312.00752) of the permuted row:
    dt_t = softplus(delta[b, k, d, o_t] + delta_bias[k, d])
    h_t = exp(dt_t A[k, d]) h_{t-1} + dt_t u[b, d, o_t] B[b, k, :, o_t]
    y_k[o_t] = <h_t, C[b, k, :, o_t]> + D[k, d] u[b, d, o_t]
    out[b, d] = sum_k y_k
"""

from __future__ import annotations

import torch

from .._typing import Backend, OptTensor, Tensor
from . import _library
from ._backend import Backends
from .checks import has_values
from .selective_scan import _FLOAT_DTYPES, _param_dtype, selective_scan_ref

__all__ = ["multi_order_selective_scan", "multi_order_selective_scan_ref", "check_orders"]

_OP = "multi_order_selective_scan"
# Tokens between saved states: checkpoints are (batch, K * dim, seqlen / chunk, dstate) float32, 1/256
# of one ordering's state tensor per ordering; a 256-token chunk of dstate 64 still fits L2 in the backward.
_CPU_CHUNK = 256


# ---------------------------------------------------------------------------------------------
# Input checks shared by every backend and the reference.


def check_orders(fn: str, orders: torch.Tensor, batch: int | None = None, seqlen: int | None = None) -> None:
    """Raises ValueError unless ``orders`` is int64 (batch, K, seqlen) with every row a permutation.

    The permutation test (a sort) is skipped while tracing under torch.compile, where the data are
    not known; the CPU kernel checks it again.
    """
    if not isinstance(orders, torch.Tensor):
        raise TypeError(f"{fn}: orders must be a torch.Tensor, got {type(orders).__name__}")
    if orders.dtype != torch.int64:
        raise ValueError(f"{fn}: orders must be int64, got {orders.dtype}")
    if orders.dim() != 3 or orders.shape[1] < 1:
        raise ValueError(f"{fn}: orders must have shape (batch, K, seqlen) with K >= 1, got {tuple(orders.shape)}")
    if batch is not None and (orders.shape[0] != batch or orders.shape[2] != seqlen):
        raise ValueError(
            f"{fn}: orders must have shape (batch, K, seqlen) = ({batch}, K, {seqlen}), got {tuple(orders.shape)}"
        )
    if not has_values(orders) or orders.numel() == 0:
        return
    L = orders.shape[2]
    want = torch.arange(L, device=orders.device)
    if not torch.equal(orders.sort(dim=-1).values, want.expand_as(orders)):
        bad = (orders.sort(dim=-1).values != want).any(-1).nonzero()[0].tolist()
        raise ValueError(f"{fn}: orders[{bad[0]}, {bad[1]}] is not a permutation of 0..{L - 1}")


def _check_inputs(fn: str, u, delta, A, B, C, D, delta_bias, orders) -> None:
    """Raises TypeError/ValueError naming the argument for every malformed input."""
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "delta_bias": delta_bias, "orders": orders}
    for name, t in named.items():
        if t is None and name not in ("D", "delta_bias"):
            raise TypeError(f"{fn}: {name} is required, got None")
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if u.dim() != 3:
        raise ValueError(f"{fn}: u must have shape (batch, dim, seqlen), got {tuple(u.shape)}")
    if u.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{fn}: u must be float32, float16 or bfloat16 (or float64), got {u.dtype}")
    for name, t in named.items():
        if t is not None and t.device != u.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but u is on {u.device}; all inputs must share a device")
    batch, dim, seqlen = u.shape
    check_orders(fn, orders, batch, seqlen)
    K = orders.shape[1]
    pdtype = _param_dtype(u)
    if A.dim() != 3 or A.shape[0] != K or A.shape[1] != dim or A.shape[2] < 1:
        raise ValueError(f"{fn}: A must have shape (K, dim, dstate) = ({K}, {dim}, dstate >= 1), got {tuple(A.shape)}")
    if A.dtype != pdtype:
        raise ValueError(f"{fn}: A must be {pdtype} for {u.dtype} inputs, got {A.dtype}")
    dstate = A.shape[2]
    for name, t, mid, what in (("delta", delta, dim, "dim"), ("B", B, dstate, "dstate"), ("C", C, dstate, "dstate")):
        want = (batch, K, mid, seqlen)
        if tuple(t.shape) != want:
            raise ValueError(f"{fn}: {name} must have shape (batch, K, {what}, seqlen) = {want}, got {tuple(t.shape)}")
        if t.dtype != u.dtype:
            raise ValueError(f"{fn}: {name} must have the dtype of u ({u.dtype}), got {t.dtype}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is None:
            continue
        if tuple(t.shape) != (K, dim):
            raise ValueError(f"{fn}: {name} must have shape (K, dim) = {(K, dim)}, got {tuple(t.shape)}")
        if t.dtype != pdtype:
            raise ValueError(f"{fn}: {name} must be {pdtype} (like A), got {t.dtype}")


# ---------------------------------------------------------------------------------------------
# The reference: K selective scans on permuted copies.


def multi_order_selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: OptTensor = None,
    delta_bias: OptTensor = None,
    orders: OptTensor = None,
    *,
    delta_softplus: bool = True,
) -> Tensor:
    """Pure-PyTorch multi-order scan: K calls of :func:`selective_scan_ref` on permuted copies.

    Args: as :func:`multi_order_selective_scan` (without ``backend``).

    Returns:
        (batch, dim, seqlen) in u's dtype.
    """
    _check_inputs("multi_order_selective_scan_ref", u, delta, A, B, C, D, delta_bias, orders)
    acc = _param_dtype(u)
    out = torch.zeros(u.shape, dtype=acc, device=u.device)
    for k in range(orders.shape[1]):
        o = orders[:, k]  # (batch, L)
        ou = o[:, None, :].expand_as(u)
        y = selective_scan_ref(
            u.gather(2, ou),
            delta[:, k].gather(2, ou),
            A[k],
            B[:, k].gather(2, o[:, None, :].expand_as(B[:, k])),
            C[:, k].gather(2, o[:, None, :].expand_as(C[:, k])),
            None if D is None else D[k],
            None,
            None if delta_bias is None else delta_bias[k],
            delta_softplus,
        )
        out = out.scatter_add(2, ou, y.to(acc))
    return out.to(u.dtype)


# ---------------------------------------------------------------------------------------------
# The compiled op: fake implementations and autograd.


def _fwd_fake(u, delta, A, B, C, D, delta_bias, orders, delta_softplus, chunk_size):
    batch, dim, seqlen = u.shape
    K, dstate = A.shape[0], A.shape[2]
    n_chunks = (seqlen + chunk_size - 1) // chunk_size
    return u.new_empty((batch, dim, seqlen)), u.new_empty((batch, K * dim, n_chunks, dstate), dtype=_param_dtype(u))


def _bwd_fake(grad_out, u, delta, A, B, C, D, delta_bias, orders, checkpoints, delta_softplus, chunk_size):
    acc = _param_dtype(u)

    def like(t):
        return u.new_empty((0,), dtype=acc) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)

    return like(u), like(delta), like(A), like(B), like(C), like(D), like(delta_bias)


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, orders, delta_softplus, chunk_size = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, orders, output[1])
    ctx.delta_softplus = delta_softplus
    ctx.chunk_size = chunk_size
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, bwd_op, grad_out, _grad_checkpoints):
    u, delta, A, B, C, D, delta_bias, orders, checkpoints = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(u)
    elif grad_out.stride(-1) != 1:
        grad_out = grad_out.contiguous()
    du, ddelta, dA, dB, dC, dD, dbias = bwd_op(
        grad_out, u, delta, A, B, C, D, delta_bias, orders, checkpoints, ctx.delta_softplus, ctx.chunk_size
    )
    return (
        du,
        ddelta,
        dA,
        dB,
        dC,
        dD if D is not None else None,
        dbias if delta_bias is not None else None,
        None,
        None,
        None,
    )


if _library.HAS_TRITON:
    from typing import Optional

    from medkernels.triton import multi_order_scan as _tmos

    def _f32(t):
        return None if t is None else t.float().contiguous()

    @torch.library.custom_op("medkernels::multi_order_selective_scan_fwd_triton", mutates_args=())
    def _fwd_triton(
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor],
        delta_bias: Optional[torch.Tensor],
        orders: torch.Tensor,
        delta_softplus: bool,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, ckpt = _tmos.forward(
            u.contiguous(),
            delta.contiguous(),
            _f32(A),
            B.contiguous(),
            C.contiguous(),
            _f32(D),
            _f32(delta_bias),
            orders.contiguous(),
            delta_softplus,
            chunk_size,
        )
        return out.to(u.dtype), ckpt.to(_param_dtype(u))

    @torch.library.custom_op("medkernels::multi_order_selective_scan_bwd_triton", mutates_args=())
    def _bwd_triton(
        grad_out: torch.Tensor,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: Optional[torch.Tensor],
        delta_bias: Optional[torch.Tensor],
        orders: torch.Tensor,
        checkpoints: torch.Tensor,
        delta_softplus: bool,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        du, ddelta, dA, dB, dC, dD, dbias = _tmos.backward(
            grad_out.contiguous(),
            u.contiguous(),
            delta.contiguous(),
            _f32(A),
            B.contiguous(),
            C.contiguous(),
            _f32(D),
            _f32(delta_bias),
            orders.contiguous(),
            checkpoints.float().contiguous(),
            delta_softplus,
            chunk_size,
        )
        empty = u.new_empty((0,), dtype=_param_dtype(u))
        return (
            du.to(u.dtype),
            ddelta.to(delta.dtype),
            dA.to(A.dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            empty.clone() if D is None else dD.to(D.dtype),
            empty.clone() if delta_bias is None else dbias.to(delta_bias.dtype),
        )


_library.register_kernel(
    _OP,
    ("multi_order_selective_scan_fwd", "multi_order_selective_scan_bwd"),
    ("multi_order_selective_scan_fwd_triton", "multi_order_selective_scan_bwd_triton"),
    fwd_fake=_fwd_fake,
    bwd_fake=_bwd_fake,
    setup_context=_setup_context,
    backward=_backward,
)

_TRITON_MAX_STATE = 256  # medkernels.triton.multi_order_scan.MAX_STATE (that module needs triton)


def _triton_state_limit(u, A=None, *rest) -> str | None:
    if A is not None and A.shape[-1] > _TRITON_MAX_STATE:
        return f"the Triton kernels support dstate up to {_TRITON_MAX_STATE}, got {A.shape[-1]}"
    return None


# The Triton kernels sum the orderings and dB/dC with atomics.
BACKENDS = Backends(
    _OP,
    cpu="multi_order_selective_scan_fwd",
    triton="multi_order_selective_scan_fwd_triton",
    triton_atomics=True,
    limits={"triton": _triton_state_limit},
)


def multi_order_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: OptTensor,
    delta_bias: OptTensor,
    orders: Tensor,
    *,
    delta_softplus: bool = True,
    backend: Backend = None,
) -> Tensor:
    """K selective scans of one sequence along K orderings, summed in the original token order.

    The group Point-SSM of PointMamba2 (arXiv 2504.13015): ordering k is a permutation of the tokens
    (e.g. the points sorted by x, y, z or distance to the centroid, and the reverses), with its own
    delta, B, C, A, D and delta_bias; u is shared. Every per-token tensor is given, and the result
    returned, in the ORIGINAL token order; the kernels read through ``orders`` (no permuted copies).
    No gate (PointMamba2 gates the sum outside).

    Args:
        u: (batch, dim, seqlen), float32, float16 or bfloat16 (float64 on the CPU, for gradcheck).
        delta: (batch, K, dim, seqlen), u's dtype.
        A: (K, dim, dstate) float32 (float64 for float64 inputs).
        B: (batch, K, dstate, seqlen), u's dtype.
        C: (batch, K, dstate, seqlen), u's dtype.
        D: optional (K, dim) skip weight, A's dtype.
        delta_bias: optional (K, dim), A's dtype, added to delta before the softplus.
        orders: (batch, K, seqlen) int64; each row a permutation of 0..seqlen-1 (step t of scan k
            visits token orders[b, k, t]).
        delta_softplus: apply softplus (threshold 20) to delta + delta_bias.
        backend: None/"auto", or force "triton" (GPU; on CPU tensors the Triton interpreter), "cpu" or
            "reference" (there is no CUDA C++ kernel; on CUDA tensors the Triton one runs).

    Returns:
        (batch, dim, seqlen) in u's dtype. Gradients flow to u, delta, A, B, C, D and delta_bias.
        Non-finite inputs give the reference's result, as :func:`selective_scan_fn`.

    Raises:
        TypeError, ValueError: malformed inputs (orders that are not permutations included), naming
            the argument and what was expected.
        BackendUnavailableError: a forced backend cannot run these inputs.
    """
    _check_inputs(_OP, u, delta, A, B, C, D, delta_bias, orders)
    name = BACKENDS.choose(backend, u, A)
    if name == "reference":
        return multi_order_selective_scan_ref(u, delta, A, B, C, D, delta_bias, orders, delta_softplus=delta_softplus)
    if u.stride(-1) != 1:
        u = u.contiguous()
    if name == "triton":
        from medkernels.triton.multi_order_scan import chunk_len

        op, chunk = torch.ops.medkernels.multi_order_selective_scan_fwd_triton, chunk_len()
    else:
        op, chunk = torch.ops.medkernels.multi_order_selective_scan_fwd, _CPU_CHUNK
    out, _ = op(u, delta, A, B, C, D, delta_bias, orders, bool(delta_softplus), chunk)
    return out
