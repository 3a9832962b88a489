"""The 2D DCT-II and its inverse over the last two axes, with low-frequency truncation.

Used by DCT attention (DCT-HistoTransformer, arXiv 2410.19166), which attends over the
low-frequency 2D DCT coefficients of a feature map. ``dct2d(x)`` equals
``scipy.fft.dctn(x, type=2, norm=norm, axes=(-2, -1))`` and ``idct2d`` its inverse ``idctn``, for any
sizes. Both are a separable product with cached cosine bases, ``out = Mh @ x @ Mw^T`` per image (the
op ``medkernels::separable2d``), so truncation is free: ``dct2d(x, keep=(kh, kw))`` computes only the
kept low-frequency block, and ``idct2d(c, s=(H, W))`` reads ``c`` as the low-frequency corner of an
``(H, W)`` spectrum whose high frequencies are zero (scipy's ``s``). At these sizes (maps of tens to a
few hundred pixels) the product beats an FFT-based DCT; the kernel keeps the row-transformed
intermediate in cache instead of writing it out between two batched matmuls.
"""

from __future__ import annotations

import math

import torch

from .._typing import Backend, IntOrTuple, Norm, Tensor
from . import _library
from ._backend import Backends

__all__ = ["dct2d", "idct2d", "dct2d_ref", "idct2d_ref", "dct_matrix"]

_NORMS = ("ortho", "backward", "forward", None)


def _check_norm(fn, norm):
    if norm not in _NORMS:
        raise ValueError(f"{fn}: norm must be 'ortho', 'backward' (or None) or 'forward', got {norm!r}")


def _row_scale(n: int, norm) -> torch.Tensor:
    """a_k with C_norm = diag(a) C_ortho (float64)."""
    a = torch.full((n,), math.sqrt(2.0 * n), dtype=torch.float64)
    a[0] *= math.sqrt(2.0)  # the orthonormal first row carries an extra 1/sqrt(2)
    if norm == "ortho":
        return torch.ones(n, dtype=torch.float64)
    return a if norm in (None, "backward") else a / (2.0 * n)


def dct_matrix(n: int, norm: Norm = "ortho", *, inverse: bool = False) -> torch.Tensor:
    """The (n, n) float64 matrix of the 1D DCT-II along an axis (scipy type 2), or of its inverse.

    ``dct(x) = dct_matrix(n) @ x``; ``idct(y) = dct_matrix(n, inverse=True) @ y``.
    """
    _check_norm("dct_matrix", norm)
    k = torch.arange(n, dtype=torch.int64)[:, None]
    i = torch.arange(n, dtype=torch.int64)[None, :]
    # cos(pi k (2i + 1) / 2n) has period 4n in k (2i + 1): reduced exactly in integers first, the argument
    # stays below 2 pi and every entry is within a few ulp (unreduced, entries were off by ~n ulp)
    phase = (k * (2 * i + 1)) % (4 * n)
    ortho = torch.cos(phase.to(torch.float64) * (math.pi / (2 * n))) * math.sqrt(2.0 / n)
    ortho[0] /= math.sqrt(2.0)
    a = _row_scale(n, norm)
    return ortho.t() / a[None, :] if inverse else ortho * a[:, None]


def _axis_basis(n_in: int, n_out: int, norm, inverse: bool, dtype, device) -> torch.Tensor:
    # forward: the first n_out rows of the n_in-point DCT; inverse: the first n_in columns of the n_out-point inverse
    m = dct_matrix(n_out, norm, inverse=True)[:, :n_in] if inverse else dct_matrix(n_in, norm)[:n_out]
    return m.to(device=device, dtype=dtype).contiguous()


_BASES: dict = {}


def _bases(h, w, oh, ow, norm, inverse, dtype, device):
    if torch.compiler.is_compiling():
        return (_axis_basis(h, oh, norm, inverse, dtype, device), _axis_basis(w, ow, norm, inverse, dtype, device))
    key = (h, w, oh, ow, norm, inverse, dtype, device)
    hit = _BASES.get(key)
    if hit is None:
        if len(_BASES) > 256:
            _BASES.clear()
        hit = _BASES[key] = (
            _axis_basis(h, oh, norm, inverse, dtype, device),
            _axis_basis(w, ow, norm, inverse, dtype, device),
        )
    return hit


# ---------------------------------------------------------------------------------------------
# The separable product op: fake, autograd, Triton path.


def _sep_fake(x, mh, mw):
    return x.new_empty((*x.shape[:-2], mh.shape[0], mw.shape[0]))


def _sep_setup(ctx, inputs, output):
    x, mh, mw = inputs
    ctx.save_for_backward(x, mh, mw)


def _sep_backward(ctx, op, g):
    """The product is linear: dX = Mh^T G Mw, through the same op (so differentiable again)."""
    x, mh, mw = ctx.saved_tensors
    gx = gmh = gmw = None
    if ctx.needs_input_grad[0]:
        gx = op(g.contiguous(), mh.t().contiguous(), mw.t().contiguous())
    if ctx.needs_input_grad[1]:  # dMh = sum_b G_b Mw X_b^T
        gmh = torch.einsum("...ij,jk,...lk->il", g, mw, x)
    if ctx.needs_input_grad[2]:  # dMw = sum_b G_b^T Mh X_b
        gmw = torch.einsum("...ij,ik,...kl->jl", g, mh, x)
    return gx, gmh, gmw


if _library.HAS_TRITON:
    from medkernels.triton import dct as _tdct

    @torch.library.custom_op("medkernels::separable2d_triton", mutates_args=())
    def _sep_triton(x: torch.Tensor, mh: torch.Tensor, mw: torch.Tensor) -> torch.Tensor:
        return _tdct.separable2d(x, mh, mw)


_library.register_kernel(
    "dct2d/idct2d",
    ("separable2d", "separable2d"),
    ("separable2d_triton", "separable2d_triton"),
    fwd_fake=_sep_fake,
    setup_context=_sep_setup,
    backward=_sep_backward,
    twice_differentiable=True,
)

BACKENDS = {fn: Backends(fn, cpu="separable2d", triton="separable2d_triton") for fn in ("dct2d", "idct2d")}


# ---------------------------------------------------------------------------------------------
# Public functions.


def _pair(fn, name, value, limit, at_least: bool):
    if value is None:
        return tuple(limit)
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(f"{fn}: {name} must be an int or a pair of ints >= 1, got {value!r}")
    bad = any(v < n for v, n in zip(value, limit)) if at_least else any(v > n for v, n in zip(value, limit))
    if bad:
        rel = "at least" if at_least else "at most"
        raise ValueError(f"{fn}: {name} must be {rel} the input's last two sizes {tuple(limit)}, got {tuple(value)}")
    return tuple(value)


def _check_x(fn, x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{fn}: x must be (..., H, W) with at least 2 dims, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{fn}: x must be floating point (float32 or float64), got {x.dtype}")
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise ValueError(
            f"{fn}: x's last two axes (H, W) must be >= 1 (a transform of no samples is undefined), "
            f"got shape {tuple(x.shape)}"
        )


def _transform(fn, x, out_hw, norm, inverse, backend):
    """The separable product with the bases on the chosen backend (the reference: the two matmuls)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(compute)
    mh, mw = _bases(x.shape[-2], x.shape[-1], out_hw[0], out_hw[1], norm, inverse, compute, x.device)
    name = BACKENDS[fn.removesuffix("_ref")].choose(backend, xc, op=fn)
    if name == "reference":
        out = torch.matmul(torch.matmul(mh, xc), mw.t())
    elif name == "triton":
        out = torch.ops.medkernels.separable2d_triton(xc, mh, mw)
    else:
        out = torch.ops.medkernels.separable2d(xc, mh, mw)
    return out.to(x.dtype)


def dct2d(x: Tensor, norm: Norm = "ortho", *, keep: IntOrTuple | None = None, backend: Backend = None) -> Tensor:
    """2D DCT-II over the last two axes: ``scipy.fft.dctn(x, type=2, norm=norm, axes=(-2, -1))``.

    Args:
        x: ``(..., H, W)``, float32 or float64 (float16/bfloat16 are computed in float32 and returned
            in their dtype). Any sizes.
        norm: "ortho" (default: orthonormal), "backward"/None (scipy's default scaling) or "forward".
        keep: optional ``(kh, kw)`` (or an int for both) with kh <= H, kw <= W: return only the
            low-frequency block ``[..., :kh, :kw]``, computed directly (the dropped rows and columns of
            the bases are never multiplied).
        backend: None/"auto", "cuda", "triton", "cpu" or "reference".

    Returns:
        ``(..., kh, kw)`` (``(..., H, W)`` without keep) in x's dtype. Differentiable.

    Raises:
        TypeError / ValueError: a non-tensor, fewer than 2 dims, a non-float dtype, a bad norm, keep
            larger than the map.
    """
    fn = "dct2d"
    _check_x(fn, x)
    _check_norm(fn, norm)
    out_hw = _pair(fn, "keep", keep, x.shape[-2:], at_least=False)
    return _transform(fn, x, out_hw, norm, False, backend)


def idct2d(x: Tensor, norm: Norm = "ortho", *, s: IntOrTuple | None = None, backend: Backend = None) -> Tensor:
    """Inverse of :func:`dct2d`: ``scipy.fft.idctn(x, type=2, s=s, norm=norm, axes=(-2, -1))``.

    Args:
        x: ``(..., kh, kw)`` DCT-II coefficients, float32 or float64 (float16/bfloat16 computed in
            float32).
        norm: as given to :func:`dct2d`.
        s: optional output size ``(H, W) >= (kh, kw)`` (or an int for both): x is the low-frequency
            corner of an (H, W) spectrum whose other coefficients are zero (scipy's ``s``), so
            ``idct2d(dct2d(y, keep=k), s=y.shape[-2:])`` is y low-pass filtered.
        backend: None/"auto", "cuda", "triton", "cpu" or "reference".

    Returns:
        ``(..., H, W)`` in x's dtype. Differentiable.
    """
    fn = "idct2d"
    _check_x(fn, x)
    _check_norm(fn, norm)
    out_hw = _pair(fn, "s", s, x.shape[-2:], at_least=True)
    return _transform(fn, x, out_hw, norm, True, backend)


def dct2d_ref(x: Tensor, norm: Norm = "ortho", *, keep: IntOrTuple | None = None) -> Tensor:
    """Pure-PyTorch :func:`dct2d`: two matmuls with the (truncated) float64-built cosine bases."""
    fn = "dct2d_ref"
    _check_x(fn, x)
    _check_norm(fn, norm)
    return _transform(fn, x, _pair(fn, "keep", keep, x.shape[-2:], at_least=False), norm, False, "reference")


def idct2d_ref(x: Tensor, norm: Norm = "ortho", *, s: IntOrTuple | None = None) -> Tensor:
    """Pure-PyTorch :func:`idct2d`: two matmuls with the (truncated) float64-built inverse bases."""
    fn = "idct2d_ref"
    _check_x(fn, x)
    _check_norm(fn, norm)
    return _transform(fn, x, _pair(fn, "s", s, x.shape[-2:], at_least=True), norm, True, "reference")
