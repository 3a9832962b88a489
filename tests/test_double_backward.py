"""Second derivatives (gradient penalties, Hessian-vector products): either right or a clear error naming
the op, never the silent zeros that a non-differentiable backward kernel gives (issue 11)."""

from __future__ import annotations

import pytest
import torch
from kit import requires_triton

from medkernels import ops


def _leaf(*shape, dtype=torch.float32, seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=dtype) * scale + shift).requires_grad_(True)


def _scan(backend):
    u, delta = _leaf(2, 4, 9), _leaf(2, 4, 9, seed=1, scale=0.1, shift=0.5)
    A, B, C = _leaf(4, 3, seed=2, scale=0.1, shift=-1), _leaf(2, 3, 9, seed=3), _leaf(2, 3, 9, seed=4)
    return ops.selective_scan_fn(u, delta, A, B, C, backend=backend), [u, delta, A, B, C]


def _conv(backend):
    x, w = _leaf(2, 4, 9), _leaf(4, 3, seed=1)
    return ops.causal_conv1d_fn(x, w, activation="silu", backend=backend), [x, w]


def _na(backend):
    q, k, v = _leaf(1, 6, 2, 4), _leaf(1, 6, 2, 4, seed=1), _leaf(1, 6, 2, 4, seed=2)
    return ops.na1d(q, k, v, 3, backend=backend), [q, k, v]


def _na_qk(backend):
    q, k = _leaf(1, 2, 6, 4), _leaf(1, 2, 6, 4, seed=1)
    return ops.na1d_qk(q, k, 3, backend=backend), [q, k]


def _na_av(backend):
    a, v = _leaf(1, 2, 6, 3), _leaf(1, 2, 6, 4, seed=1)
    return ops.na1d_av(a, v, 3, backend=backend), [a, v]


def _dilated(backend):
    q, k, v = (_leaf(1, 2, 4, 4, 2, 4, seed=s) for s in range(3))
    return ops.dilated_attention3d(q, k, v, (1, 2, 2), "local", backend=backend), [q, k, v]


def _multi(backend):
    g = torch.Generator().manual_seed(5)
    orders = torch.stack([torch.stack([torch.randperm(7, generator=g) for _ in range(2)]) for _ in range(1)])
    u, delta = _leaf(1, 3, 7), _leaf(1, 2, 3, 7, seed=1, scale=0.1, shift=0.5)
    A, B, C = _leaf(2, 3, 2, seed=2, scale=0.1, shift=-1), _leaf(1, 2, 2, 7, seed=3), _leaf(1, 2, 2, 7, seed=4)
    return ops.multi_order_selective_scan(u, delta, A, B, C, None, None, orders, backend=backend), [u, delta, A]


def _kan(backend):
    x, w = _leaf(5, 3), _leaf(4, 24, seed=1, scale=0.1)
    return ops.rswaf_kan(x, torch.linspace(-2, 2, 8), 1 / 0.33, w, backend=backend), [x, w]


CASES = {
    "selective_scan_fn": _scan,
    "causal_conv1d_fn": _conv,
    "na1d/na2d/na3d": _na,
    "na1d_qk/na2d_qk/na3d_qk": _na_qk,
    "na1d_av/na2d_av/na3d_av": _na_av,
    "dilated_attention3d": _dilated,
    "multi_order_selective_scan": _multi,
    "rswaf_kan": _kan,
}
NO_TRITON = {"na1d_qk/na2d_qk/na3d_qk", "na1d_av/na2d_av/na3d_av"}  # the unfused pair is CPU (and reference) only


@pytest.mark.parametrize(
    "name,backend",
    [
        pytest.param(n, b, marks=requires_triton) if b == "triton" else (n, b)
        for n in sorted(CASES)
        for b in ("cpu", "triton")
        if not (b == "triton" and n in NO_TRITON)
    ],
)
def test_double_backward_raises_naming_the_op(name, backend):
    out, leaves = CASES[name](backend)
    grads = torch.autograd.grad((out * out).sum(), leaves, create_graph=True)
    # first order with create_graph=True is unchanged
    plain = torch.autograd.grad((out * out).sum(), leaves, retain_graph=True)
    for a, b in zip(grads, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    penalty = sum((g * g).sum() for g in grads)
    with pytest.raises(NotImplementedError, match=f"{name}: double backward"):
        penalty.backward()


@pytest.mark.parametrize("name", sorted(CASES))
def test_double_backward_on_the_reference(name):
    """The advertised alternative: the reference backend is differentiable twice (non-zero, finite)."""
    out, leaves = CASES[name]("reference")
    grads = torch.autograd.grad((out * out).sum(), leaves, create_graph=True)
    second = torch.autograd.grad(sum((g * g).sum() for g in grads), leaves, allow_unused=True)
    assert any(s is not None and bool(s.abs().sum() > 0) for s in second)
    assert all(s is None or bool(s.isfinite().all()) for s in second)


def test_knn_distances_twice_differentiable():
    """kNN's backward is plain torch (gathers and scatter-adds): its second derivative is exact."""
    q = torch.randn(1, 5, 3, dtype=torch.float64, requires_grad=True)
    p = torch.randn(1, 12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: ops.knn(a, b, 4, backend="cpu")[0], (q, p))


def test_dct_twice_differentiable():
    """The DCT is linear; its backward is the same kernel with transposed bases."""
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: ops.dct2d(t, backend="cpu") ** 2, (x,))
