"""Point-cloud primitives: exact furthest point sampling and k nearest neighbours.

The hierarchical point-cloud SSM (Zhang, Yang, Li, MICCAI 2025, arXiv 2504.13015; "PointMamba2")
samples each level with furthest point sampling (FPS) and groups neighbours with kNN in coordinate
and feature space; its official code needs CUDA-only extensions (pointnet2-style FPS, KNN_CUDA) for
both. These run on the CPU (C++) and on GPUs (Triton), forward and backward.

Exactness: a squared distance is ``sum_c (p_c - q_c)^2`` added in channel order, every product and
sum rounded (no fused multiply-add), in float32 (float64 for float64 input), exactly as the
references compute it. So FPS returns the textbook loop's indices, bit for bit, and kNN orders
neighbours by that distance with ties to the lower index, like a stable sort.

Non-finite input follows the references, which are plain torch loops, on every backend: FPS takes
``torch.minimum`` (NaN propagates) and ``torch.argmax`` (the first NaN is the maximum), so a point at a
NaN distance is taken next and, once a point with a NaN coordinate is a centre, the lowest index is
repeated; kNN orders like ``torch.sort(stable=True)``: +inf after every finite distance, NaN after +inf,
ties by index, so every one of the k slots holds a real point of the cloud (never padding, never
uninitialised memory).
"""

from __future__ import annotations

import torch

from .._typing import Backend, OptTensor, Tensor
from . import _library
from ._backend import Backends
from .checks import has_values

__all__ = ["furthest_point_sample", "furthest_point_sample_ref", "knn", "knn_ref"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_cloud(fn: str, name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[2] < 1:
        raise ValueError(f"{fn}: {name} must be (B, N, C) with C >= 1, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise ValueError(f"{fn}: {name} must be float32, float64, float16 or bfloat16, got {x.dtype}")


def _check_int(fn: str, name: str, v, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{fn}: {name} must be an int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise ValueError(f"{fn}: {name} must be in [{lo}, {hi}] ({what}), got {v}")
    return v


def _check_lengths(fn: str, name: str, lengths, like: torch.Tensor, lo: int, hi: int, what: str):
    """None, or an integer (B,) tensor on like's device with values in [lo, hi] -> int64."""
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor or None, got {type(lengths).__name__}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"{fn}: {name} must be an integer tensor, got {lengths.dtype}")
    if lengths.shape != (like.shape[0],):
        raise ValueError(f"{fn}: {name} must have shape ({like.shape[0]},) (one per cloud), got {tuple(lengths.shape)}")
    if lengths.device != like.device:
        raise ValueError(f"{fn}: {name} must be on {like.device} like the points, got {lengths.device}")
    lengths = lengths.to(torch.int64)
    if has_values(lengths) and lengths.numel():
        low, high = int(lengths.min()), int(lengths.max())
        if low < lo or high > hi:
            raise ValueError(f"{fn}: {name} must be in [{lo}, {hi}] ({what}), got values in [{low}, {high}]")
    return lengths


FPS_BACKENDS = Backends("furthest_point_sample", cpu="furthest_point_sample", triton="furthest_point_sample_triton")
_TRITON_MAX_K = 256  # medkernels.triton.point_cloud.MAX_K (that module needs triton)


def _triton_max_k(x, k: int = 1) -> str | None:
    return f"the Triton kNN keeps at most {_TRITON_MAX_K} neighbours, got k = {k}" if k > _TRITON_MAX_K else None


KNN_BACKENDS = Backends("knn", cpu="knn", triton="knn_triton", limits={"triton": _triton_max_k})


def _sqdist(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """sum_c (p_c - q_c)^2 over the last axis, in channel order, each step rounded (the kernels' order)."""
    diff = p - q
    d = diff[..., 0] * diff[..., 0]
    for c in range(1, diff.shape[-1]):
        d = d + diff[..., c] * diff[..., c]
    return d


# ---------------------------------------------------------------------------------------------
# Furthest point sampling.


def _fps_fake(xyz, npoint, lengths, start_idx):
    return xyz.new_empty((xyz.shape[0], npoint), dtype=torch.int64)


if _library.HAS_TRITON:
    from medkernels.triton import point_cloud as _tpc

    @torch.library.custom_op("medkernels::furthest_point_sample_triton", mutates_args=())
    def _fps_triton(xyz: torch.Tensor, npoint: int, lengths: torch.Tensor | None, start_idx: int) -> torch.Tensor:
        return _tpc.furthest_point_sample(xyz, npoint, lengths, start_idx)


_library.register_kernel(
    "furthest_point_sample", ("furthest_point_sample", None), ("furthest_point_sample_triton", None), fwd_fake=_fps_fake
)


def _fps_reference(xyz, npoint, lengths, start_idx):
    out = torch.empty((xyz.shape[0], npoint), dtype=torch.int64, device=xyz.device)
    for b in range(xyz.shape[0]):
        n = xyz.shape[1] if lengths is None else int(lengths[b])
        pts = xyz[b, :n].to(_acc(xyz))
        dist = torch.full((n,), float("inf"), dtype=pts.dtype, device=xyz.device)
        last = start_idx
        out[b, 0] = last
        for i in range(1, npoint):
            dist = torch.minimum(dist, _sqdist(pts, pts[last]))
            last = int(torch.argmax(dist))  # the first of equal maxima
            out[b, i] = last
    return out


def furthest_point_sample(
    xyz: Tensor, npoint: int, *, lengths: OptTensor = None, start_idx: int = 0, backend: Backend = None
) -> Tensor:
    """Exact furthest point sampling (the indices of the textbook loop).

    Starting at ``start_idx``, each step takes the point with the largest squared distance to the
    points taken so far, ties to the lowest index (as ``torch.argmax``). Distances are rounded as the
    reference rounds them (see the module docstring), so every backend returns the same indices, also
    for NaN/inf coordinates (torch's NaN rules; see the module docstring).

    Args:
        xyz: ``(B, N, C)`` points, any C (coordinates or features); float32, float64, float16 or
            bfloat16 (half types are computed in float32).
        npoint: points to take per cloud, ``1 <= npoint <= N``.
        lengths: optional ``(B,)`` integer tensor on xyz's device: cloud b is ``xyz[b, :lengths[b]]``
            (padded batches); every length must be at least ``max(npoint, start_idx + 1)``.
        start_idx: the first point taken in every cloud (default 0).
        backend: None/"auto", "cuda", "triton", "cpu" or "reference".

    Returns:
        ``(B, npoint)`` int64 indices into each cloud, in the order taken. Not differentiable.

    Raises:
        TypeError / ValueError: a bad rank, dtype or device; ``npoint`` > N (or a length);
            ``start_idx`` outside the cloud.
    """
    npoint, lengths, start_idx = _fps_args("furthest_point_sample", xyz, npoint, lengths, start_idx)
    name = FPS_BACKENDS.choose(backend, xyz)
    if name == "reference":
        return furthest_point_sample_ref(xyz, npoint, lengths=lengths, start_idx=start_idx)
    if name == "triton":
        return torch.ops.medkernels.furthest_point_sample_triton(xyz, npoint, lengths, start_idx)
    return torch.ops.medkernels.furthest_point_sample(xyz, npoint, lengths, start_idx)


def furthest_point_sample_ref(xyz: Tensor, npoint: int, *, lengths: OptTensor = None, start_idx: int = 0) -> Tensor:
    """Pure-PyTorch :func:`furthest_point_sample`: the textbook loop, one step per sampled point."""
    return _fps_reference(xyz, *_fps_args("furthest_point_sample_ref", xyz, npoint, lengths, start_idx))


def _fps_args(fn, xyz, npoint, lengths, start_idx):
    """Checks FPS's arguments: (npoint, lengths as int64 or None, start_idx)."""
    _check_cloud(fn, "xyz", xyz)
    n = xyz.shape[1]
    if n == 0:
        raise ValueError(f"{fn}: xyz has no points (N = 0)")
    npoint = _check_int(fn, "npoint", npoint, 1, n, "at most N, the number of points")
    start_idx = _check_int(fn, "start_idx", start_idx, 0, n - 1, "an index into the cloud")
    lengths = _check_lengths(
        fn,
        "lengths",
        lengths,
        xyz,
        max(npoint, start_idx + 1),
        n,
        "each cloud needs at least npoint points and start_idx",
    )
    return npoint, lengths, start_idx


# ---------------------------------------------------------------------------------------------
# k nearest neighbours.


def _knn_fake(query, points, k, query_lengths, lengths):
    shape = (query.shape[0], query.shape[1], k)
    return query.new_empty(shape), query.new_empty(shape, dtype=torch.int64)


def _knn_setup(ctx, inputs, output):
    query, points = inputs[0], inputs[1]
    ctx.save_for_backward(query, points, output[1])


def _knn_backward(ctx, _bwd_op, grad_dists, grad_idx):
    """d = sum_c (q_c - p_c)^2: dq = sum_j 2 (q - p_j) g_j, dp_j -= 2 (q - p_j) g_j (padded entries skipped)."""
    query, points, idx = ctx.saved_tensors
    B, M, K = idx.shape
    C = query.shape[2]
    acc = _acc(query)
    valid = idx >= 0
    safe = idx.clamp(min=0).reshape(B, M * K, 1).expand(B, M * K, C)
    near = points.to(acc).gather(1, safe).reshape(B, M, K, C)
    g = (2 * grad_dists.to(acc) * valid)[..., None] * (query.to(acc)[:, :, None, :] - near)
    gq = g.sum(2).to(query.dtype) if ctx.needs_input_grad[0] else None
    gp = None
    if ctx.needs_input_grad[1]:
        gp = torch.zeros(points.shape, dtype=acc, device=points.device)
        gp = gp.scatter_add(1, safe, -g.reshape(B, M * K, C)).to(points.dtype)
    return gq, gp, None, None, None


if _library.HAS_TRITON:

    @torch.library.custom_op("medkernels::knn_triton", mutates_args=())
    def _knn_triton(
        query: torch.Tensor,
        points: torch.Tensor,
        k: int,
        query_lengths: torch.Tensor | None,
        lengths: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _tpc.knn(query, points, k, query_lengths, lengths)


# The backward is torch ops (gathers, scatter-adds): differentiable again.
_library.register_kernel(
    "knn", ("knn", None), ("knn_triton", None), fwd_fake=_knn_fake, setup_context=_knn_setup, backward=_knn_backward
)


def _knn_reference(query, points, k, query_lengths, lengths):
    B, M, _ = query.shape
    N = points.shape[1]
    acc = _acc(query)
    d = _sqdist(query.to(acc)[:, :, None, :], points.to(acc)[:, None, :, :])  # (B, M, N)
    if lengths is not None:  # padding sorts after everything (NaN, then its higher index); k <= every length
        d = d.masked_fill(torch.arange(N, device=d.device) >= lengths[:, None, None], float("nan"))
    order = torch.sort(d.detach(), dim=-1, stable=True).indices[..., :k]
    dists = d.gather(2, order)
    if query_lengths is not None:
        pad = torch.arange(M, device=d.device)[None, :, None] >= query_lengths[:, None, None]
        dists = dists.masked_fill(pad, 0.0)
        order = order.masked_fill(pad, -1)
    return dists.to(query.dtype), order


def knn(
    query: Tensor,
    points: Tensor,
    k: int,
    *,
    query_lengths: OptTensor = None,
    lengths: OptTensor = None,
    sorted: bool = True,
    backend: Backend = None,
) -> tuple[Tensor, Tensor]:
    """The k nearest neighbours of each query point among the points of its cloud.

    Works in coordinate space (C = 3) and feature space (any C, as PointMamba2 groups by feature).
    Neighbours come nearest first, ties to the lower index (as a stable sort), by the squared
    distance rounded as the module docstring says. Non-finite distances (NaN/inf coordinates, or
    squares overflowing float32) come last, +inf before NaN, ties by index, as ``torch.sort``: all k
    slots always hold real points of the cloud.

    Args:
        query: ``(B, M, C)`` query points; float32, float64, float16 or bfloat16.
        points: ``(B, N, C)`` points to search, query's dtype and device.
        k: neighbours per query, ``1 <= k <= N`` (and at most every cloud's length).
        query_lengths: optional ``(B,)`` integer tensor: only the first ``query_lengths[b]`` queries of
            cloud b are real; the others get distance 0 and index -1.
        lengths: optional ``(B,)`` integer tensor: cloud b is ``points[b, :lengths[b]]``.
        sorted: accepted for API compatibility; the result is always sorted nearest first.
        backend: None/"auto", "cuda", "triton", "cpu" or "reference".

    Returns:
        ``(dists, idx)``: squared distances ``(B, M, k)`` in query's dtype, differentiable with respect
        to query and points, and int64 indices ``(B, M, k)`` into each cloud's points.

    Raises:
        TypeError / ValueError: a bad rank, dtype or device; ``k`` larger than the number of points.
    """
    k, query_lengths, lengths = _knn_args("knn", query, points, k, query_lengths, lengths, sorted)
    name = KNN_BACKENDS.choose(backend, query, k)
    if name == "reference":
        return knn_ref(query, points, k, query_lengths=query_lengths, lengths=lengths)
    if name == "triton":
        return torch.ops.medkernels.knn_triton(query, points, k, query_lengths, lengths)
    return torch.ops.medkernels.knn(query, points, k, query_lengths, lengths)


def knn_ref(
    query: Tensor,
    points: Tensor,
    k: int,
    *,
    query_lengths: OptTensor = None,
    lengths: OptTensor = None,
    sorted: bool = True,
) -> tuple[Tensor, Tensor]:
    """Pure-PyTorch :func:`knn`: all pairwise distances, a stable sort, the first k."""
    k, query_lengths, lengths = _knn_args("knn_ref", query, points, k, query_lengths, lengths, sorted)
    return _knn_reference(query, points, k, query_lengths, lengths)


def _knn_args(fn, query, points, k, query_lengths, lengths, sorted):
    """Checks kNN's arguments: (k, query_lengths, lengths), the lengths as int64 or None."""
    _check_cloud(fn, "query", query)
    _check_cloud(fn, "points", points)
    if points.shape[0] != query.shape[0] or points.shape[2] != query.shape[2]:
        raise ValueError(
            f"{fn}: points must be (B, N, C) with query's B = {query.shape[0]} and C = {query.shape[2]}, "
            f"got shape {tuple(points.shape)}"
        )
    if points.dtype != query.dtype or points.device != query.device:
        raise ValueError(
            f"{fn}: points must have query's dtype {query.dtype} and device {query.device}, got "
            f"{points.dtype} on {points.device}"
        )
    if not isinstance(sorted, bool):
        raise TypeError(f"{fn}: sorted must be a bool, got {type(sorted).__name__}")
    n = points.shape[1]
    if n == 0:
        raise ValueError(f"{fn}: points has no points (N = 0)")
    k = _check_int(fn, "k", k, 1, n, "at most N, the number of points")
    lengths = _check_lengths(fn, "lengths", lengths, points, k, n, "each cloud needs at least k points")
    query_lengths = _check_lengths(fn, "query_lengths", query_lengths, query, 0, query.shape[1], "at most M")
    return k, query_lengths, lengths
