"""FasterKAN's layer after its LayerNorm, fused: the RSWAF basis formed inside the matrix product.

FasterKAN (A. Delis, GitHub AthanasiosDelis/faster-kan) is a Kolmogorov-Arnold network (Liu et al.,
arXiv 2404.19756) whose univariate functions are sums of "reflectional switch" (RSWAF) bumps; MedViTV2
(Manzari et al., arXiv 2502.13693) puts one after every global block, and it is that model's hot spot.
Per token and input channel ``i`` it evaluates G bumps around fixed grid points,

    phi[i * G + g] = 1 - tanh((x[i] - grid[g]) * inv_denominator) ** 2,

(flattened channel-major) and applies a bias-free linear map ``out = phi @ weight^T`` with weight
``(out, in * G)``. The unfused layer writes the G-times expanded basis (``tokens x in * G``) and keeps it
(and tanh's output) for the backward. :func:`rswaf_kan` forms the basis block by block inside the product
and recomputes it in the backward, so memory stays at the size of the inputs and outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._typing import Backend, Tensor
from . import _library
from ._backend import Backends

__all__ = ["rswaf_kan", "rswaf_kan_ref", "rswaf_basis"]

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# Past |a| = 40 the basis is exactly 0 on every backend (exp(-80) < 2e-35: nothing a float32 sum can see),
# so zeros, and an infinite weight's 0 * inf = NaN, are the same everywhere.
_ZERO_BEYOND = 40.0


def rswaf_basis(x: Tensor, grid: Tensor, inv_denominator: float | Tensor) -> Tensor:
    """The unfused RSWAF basis (what FasterKAN stores): ``(..., in) -> (..., in * G)``, channel-major.

    FasterKAN computes ``1 - tanh(a)^2``, which cancels to exactly 0 once ``tanh(a)`` rounds to 1
    (``|a| > 9`` in float32). This computes the same function as ``4 e / (1 + e)^2`` with
    ``e = exp(-2 |a|)``: no cancellation (it differs from FasterKAN's by less than 1e-7 absolute), and
    exactly 0 only past ``|a| = 40``, as every backend of :func:`rswaf_kan`.

    Args:
        x: ``(..., in)`` floating point.
        grid: ``(G,)`` grid points.
        inv_denominator: a float or 0-dim tensor.

    Returns:
        ``(..., in * G)`` with entry ``i * G + g`` equal to ``1 - tanh(a)^2``, ``a = (x[i] - grid[g]) *
        inv_denominator``, in the promoted dtype of the inputs.
    """
    a = ((x[..., None] - grid) * inv_denominator).abs()
    e = torch.exp(-2 * a).masked_fill(a > _ZERO_BEYOND, 0)
    return (4 * e / ((1 + e) * (1 + e))).flatten(-2)


def _check(fn, x, grid, inv_denominator, weight):
    for name, t in (("x", x), ("grid", grid), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{fn}: x must be (..., in) with at least 1 dim, got a 0-dim tensor")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{fn}: x must be float32, float16 or bfloat16 (or float64), got {x.dtype}")
    if grid.dim() != 1 or grid.shape[0] < 1:
        raise ValueError(f"{fn}: grid must be (G,) with G >= 1, got shape {tuple(grid.shape)}")
    if not grid.is_floating_point():
        raise ValueError(f"{fn}: grid must be floating point, got {grid.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"{fn}: weight must be (out, in * G) (2-D), got shape {tuple(weight.shape)}")
    k = x.shape[-1] * grid.shape[0]
    if weight.shape[1] != k:
        raise ValueError(
            f"{fn}: weight must be (out, in * G) = (out, {x.shape[-1]} * {grid.shape[0]} = {k}), got "
            f"shape {tuple(weight.shape)}"
        )
    if weight.dtype != x.dtype:
        raise ValueError(f"{fn}: weight has dtype {weight.dtype} but x has {x.dtype}")
    for name, t in (("grid", grid), ("weight", weight)):
        if t.device != x.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but x is on {x.device}")
    if isinstance(inv_denominator, torch.Tensor):
        if inv_denominator.dim() != 0:
            raise ValueError(
                f"{fn}: inv_denominator must be a float or a 0-dim tensor, got shape {tuple(inv_denominator.shape)}"
            )
        if not inv_denominator.is_floating_point():
            raise ValueError(f"{fn}: inv_denominator must be floating point, got {inv_denominator.dtype}")
        if inv_denominator.device != x.device:
            raise ValueError(f"{fn}: inv_denominator is on {inv_denominator.device} but x is on {x.device}")
    elif isinstance(inv_denominator, bool) or not isinstance(inv_denominator, (int, float)):
        raise TypeError(
            f"{fn}: inv_denominator must be a float or a 0-dim tensor, got {type(inv_denominator).__name__}"
        )


def _reference(x, grid, inv_denominator, weight):
    """The unfused layer in float32 (float64 for float64 inputs): basis, then F.linear."""
    acc = _acc(x)
    phi = rswaf_basis(x.to(acc), grid.to(acc), inv_denominator.to(acc))
    return F.linear(phi, weight.to(acc)).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Fakes, autograd, the Triton ops.


def _fwd_fake(x, grid, inv_denominator, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _bwd_fake(grad_out, x, grid, inv_denominator, weight, output_mask):
    def grad_like(t, need):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if need else t.new_empty((0,))

    return tuple(grad_like(t, need) for t, need in zip((x, grid, inv_denominator, weight), output_mask))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, bwd_op, grad_out):
    x, grid, inv_denominator, weight = ctx.saved_tensors
    mask = [bool(n) for n in ctx.needs_input_grad[:4]]
    grads = bwd_op(grad_out.contiguous(), x, grid, inv_denominator, weight, mask)
    return tuple(g if need else None for g, need in zip(grads, mask))


if _library.HAS_TRITON:
    from medkernels.triton import rswaf_kan as _tkan

    @torch.library.custom_op("medkernels::rswaf_kan_fwd_triton", mutates_args=())
    def _fwd_triton(
        x: torch.Tensor, grid: torch.Tensor, inv_denominator: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        return _tkan.forward(x, grid, inv_denominator, weight)

    @torch.library.custom_op("medkernels::rswaf_kan_bwd_triton", mutates_args=())
    def _bwd_triton(
        grad_out: torch.Tensor,
        x: torch.Tensor,
        grid: torch.Tensor,
        inv_denominator: torch.Tensor,
        weight: torch.Tensor,
        output_mask: list[bool],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return _tkan.backward(grad_out, x, grid, inv_denominator, weight, output_mask)


_library.register_kernel(
    "rswaf_kan",
    ("rswaf_kan_fwd", "rswaf_kan_bwd"),
    ("rswaf_kan_fwd_triton", "rswaf_kan_bwd_triton"),
    fwd_fake=_fwd_fake,
    bwd_fake=_bwd_fake,
    setup_context=_setup,
    backward=_backward,
)

_TRITON_MAX_GRID = 32  # medkernels.triton.rswaf_kan.MAX_GRID (that module needs triton)


def _triton_grid_limit(x, grid=None) -> str | None:
    if grid is not None and grid.shape[0] > _TRITON_MAX_GRID:
        return f"the Triton KAN kernels support up to {_TRITON_MAX_GRID} grid points, got {grid.shape[0]}"
    return None


BACKENDS = Backends(
    "rswaf_kan", cpu="rswaf_kan_fwd", triton="rswaf_kan_fwd_triton", limits={"triton": _triton_grid_limit}
)


# ---------------------------------------------------------------------------------------------
# Public functions.


def rswaf_kan(
    x: Tensor, grid: Tensor, inv_denominator: float | Tensor, weight: Tensor, *, backend: Backend = None
) -> Tensor:
    """FasterKAN's RSWAF basis + bias-free linear map, fused (the layer after its LayerNorm).

    ``out[..., o] = sum_{i, g} (1 - tanh((x[..., i] - grid[g]) * inv_denominator)^2) * weight[o, i * G + g]``:
    the basis is flattened channel-major (index ``i * G + g``), as FasterKAN's ``rbf(x).view(n, -1)``.

    Args:
        x: ``(..., in)`` float32/float16/bfloat16 (float64 for gradcheck); any leading dims (tokens).
        grid: ``(G,)`` grid points (e.g. ``linspace(-2, 2, 8)``), any floating dtype, on x's device.
        inv_denominator: ``1 / denominator``: a Python float or a 0-dim floating tensor on x's device.
        weight: ``(out, in * G)`` in x's dtype (``spline_linear.weight``).
        backend: None/"auto", "cuda", "triton", "cpu" or "reference" (see medkernels.ops.choose_backend).

    Returns:
        ``(..., out)`` in x's dtype, computed with float32 accumulation (float64 for float64). Differentiable
        in x and weight, and in grid and inv_denominator when they require grad.

    Raises:
        TypeError / ValueError: non-tensors, wrong rank, dtype, device or shape mismatches.
    """
    g, inv = _prepare("rswaf_kan", x, grid, inv_denominator, weight)
    name = BACKENDS.choose(backend, x, g)
    if name == "reference":
        return rswaf_kan_ref(x, grid, inv_denominator, weight)
    if name == "triton":
        return torch.ops.medkernels.rswaf_kan_fwd_triton(x, g, inv, weight)
    return torch.ops.medkernels.rswaf_kan_fwd(x, g, inv, weight)


def rswaf_kan_ref(x: Tensor, grid: Tensor, inv_denominator: float | Tensor, weight: Tensor) -> Tensor:
    """Pure-PyTorch :func:`rswaf_kan` (the oracle): :func:`rswaf_basis` materialised in float32 (float64
    for float64), then ``F.linear``. Arguments and returns as :func:`rswaf_kan`."""
    return _reference(x, *_prepare("rswaf_kan_ref", x, grid, inv_denominator, weight), weight)


def _prepare(fn, x, grid, inv_denominator, weight):
    """Checks the arguments; the grid and inv_denominator as (G,) and 0-dim tensors in the compute dtype."""
    _check(fn, x, grid, inv_denominator, weight)
    acc = _acc(x)
    inv = (
        inv_denominator.to(acc)
        if isinstance(inv_denominator, torch.Tensor)
        else torch.full((), float(inv_denominator), dtype=acc, device=x.device)
    )
    return grid.to(acc), inv
