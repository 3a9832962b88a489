"""The README's promise for the CPU kernels: the same bits on every run and for every thread count. Every
op, forward and backward, at 1, 2, 3 and 7 threads (more threads than cores included), on shapes large
enough that the work splits differently at each count (issue 11). causal_conv1d's own test file has
the same check (test_causal_conv1d.py)."""

from __future__ import annotations

import pytest
import torch

from medkernels import ops

THREADS = (1, 2, 3, 7)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _grads(outs, leaves, seed=99):
    """Outputs and the gradients of a random projection of them (every output path exercised)."""
    g = _gen(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs if o.is_floating_point())
    return [*outs, *torch.autograd.grad(loss, leaves)]


def selective_scan():
    g = _gen(0)
    b, d, n, L, groups = 2, 40, 16, 300, 4
    leaves = [
        torch.randn(b, d, L, generator=g),
        (torch.rand(b, d, L, generator=g) * 0.5),
        -torch.rand(d, n, generator=g) - 0.1,
        torch.randn(b, groups, n, L, generator=g),
        torch.randn(b, groups, n, L, generator=g),
        torch.randn(d, generator=g),
        torch.randn(b, d, L, generator=g),
        torch.rand(d, generator=g),
        torch.randn(b, d, n, generator=g),
    ]
    leaves = [t.requires_grad_(True) for t in leaves]
    u, delta, A, B, C, D, z, bias, h0 = leaves
    out, last = ops.selective_scan_fn(u, delta, A, B, C, D, z, bias, True, True, initial_state=h0, backend="cpu")
    return _grads([out, last], leaves)


def multi_order_scan():
    g = _gen(1)
    b, d, n, L, K = 2, 24, 8, 70, 3
    orders = torch.stack([torch.stack([torch.randperm(L, generator=g) for _ in range(K)]) for _ in range(b)])
    leaves = [
        torch.randn(b, d, L, generator=g),
        torch.rand(b, K, d, L, generator=g) * 0.5,
        -torch.rand(K, d, n, generator=g) - 0.1,
        torch.randn(b, K, n, L, generator=g),
        torch.randn(b, K, n, L, generator=g),
        torch.randn(K, d, generator=g),
        torch.rand(K, d, generator=g),
    ]
    leaves = [t.requires_grad_(True) for t in leaves]
    return _grads([ops.multi_order_selective_scan(*leaves, orders, backend="cpu")], leaves)


def _qkv(shape, seed):
    g = _gen(seed)
    return [torch.randn(*shape, generator=g).requires_grad_(True) for _ in range(3)]


def na1d():
    q, k, v = _qkv((2, 97, 3, 16), 2)
    rpb = torch.randn(3, 13, generator=_gen(3)).requires_grad_(True)
    return _grads([*ops.na1d(q, k, v, 7, dilation=2, rpb=rpb, return_lse=True, backend="cpu")], [q, k, v, rpb])


def na2d():
    q, k, v = _qkv((2, 19, 17, 4, 8), 4)
    return _grads(
        [*ops.na2d(q, k, v, (5, 3), dilation=(2, 1), is_causal=(False, True), return_lse=True, backend="cpu")],
        [q, k, v],
    )


def na3d():
    q, k, v = _qkv((1, 9, 8, 7, 2, 8), 5)
    return _grads([ops.na3d(q, k, v, 3, stride=(1, 2, 1), backend="cpu")], [q, k, v])


def na2d_unfused():
    q, k, v = _qkv((2, 3, 15, 14, 8), 6)  # heads-first, natten 0.17's layout
    attn = ops.na2d_qk(q, k, 5, 2, backend="cpu") * 0.1  # (torch's softmax backward depends on the thread count)
    return _grads([ops.na2d_av(attn, v, 5, 2, backend="cpu")], [q, k, v])


def dilated_attention(scope="local"):
    q, k, v = _qkv((2, 6, 10, 9, 2, 16), 7)
    return _grads([*ops.dilated_attention3d(q, k, v, (2, 4, 4), scope, return_lse=True, backend="cpu")], [q, k, v])


def dilated_attention_global():
    return dilated_attention("global")


def dct():
    x = torch.randn(6, 5, 30, 27, generator=_gen(8)).requires_grad_(True)
    y = ops.dct2d(x, keep=(20, 13), backend="cpu")
    return _grads([y, ops.idct2d(y, s=(30, 27), backend="cpu")], [x])


def fps():
    xyz = torch.randn(5, 3000, 3, generator=_gen(9))
    big = torch.randn(1, 140_000, 3, generator=_gen(10))  # one cloud split over the threads
    return [
        ops.furthest_point_sample(xyz, 300, lengths=torch.tensor([3000, 2500, 999, 3000, 1800]), backend="cpu"),
        ops.furthest_point_sample(big, 24, backend="cpu"),
    ]


def knn():
    g = _gen(11)
    q, p = torch.randn(3, 300, 5, generator=g), torch.randn(3, 900, 5, generator=g)  # brute force (C = 5)
    qs, ps = torch.randn(2, 300, 3, generator=g), torch.randn(2, 4096, 3, generator=g)  # spatial blocks (C = 3)
    leaves = [t.requires_grad_(True) for t in (q, p, qs, ps)]
    d1, i1 = ops.knn(leaves[0], leaves[1], 17, lengths=torch.tensor([900, 800, 40]), backend="cpu")
    d2, i2 = ops.knn(leaves[2], leaves[3], 32, backend="cpu")
    return [*_grads([d1, d2], leaves), i1, i2]


def rswaf_kan(out=24):
    g = _gen(12)
    x = torch.randn(777, 37, generator=g).requires_grad_(True)
    grid = torch.linspace(-2, 2, 8).requires_grad_(True)
    w = (torch.randn(out, 37 * 8, generator=g) * 0.1).requires_grad_(True)
    inv = torch.tensor(1 / 0.33).requires_grad_(True)
    return _grads([ops.rswaf_kan(x, grid, inv, w, backend="cpu")], [x, grid, inv, w])


def rswaf_kan_40():
    return rswaf_kan(40)


OPS = {
    f.__name__: f
    for f in (
        selective_scan,
        multi_order_scan,
        na1d,
        na2d,
        na3d,
        na2d_unfused,
        dilated_attention,
        dilated_attention_global,
        dct,
        fps,
        knn,
        rswaf_kan,
        rswaf_kan_40,
    )
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_same_bits_for_every_thread_count(name):
    before = torch.get_num_threads()
    runs = []
    try:
        for n in THREADS:
            torch.set_num_threads(n)
            runs.append(OPS[name]())
    finally:
        torch.set_num_threads(before)
    for n, run in zip(THREADS[1:], runs[1:]):
        for i, (a, b) in enumerate(zip(runs[0], run)):
            assert torch.equal(a, b), f"{name}: result {i} differs between 1 and {n} threads"
