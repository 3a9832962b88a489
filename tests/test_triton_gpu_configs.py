"""Every Triton kernel once with the launch configuration it uses on a GPU (block sizes, chunk lengths),
in the interpreter, on a small input that crosses those blocks' edges with a ragged tail: so the first GPU
run does not exercise tile code no test has run (issue 11). The other Triton tests use the interpreter's
small tiles. Forward and backward against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from kit import requires_triton

from medkernels import ops
from medkernels.ops import _library

pytestmark = requires_triton


@pytest.fixture(autouse=True)
def gpu_tiles():
    from medkernels.triton import force_gpu_configs, gpu_configs

    with force_gpu_configs():
        assert gpu_configs()
        yield


def _rand(seed, *shape, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift


def check(fn, inputs, rtol=2e-5, atol=2e-5):
    """fn(*tensors, backend) on Triton (float32) against the reference (float64): outputs and gradients."""
    ref_in = [t.clone().requires_grad_(t.is_floating_point()) for t in inputs]
    tri_in = [(t.float() if t.is_floating_point() else t).clone().requires_grad_(t.is_floating_point()) for t in inputs]
    want, got = fn(*ref_in, backend="reference"), fn(*tri_in, backend="triton")
    want, got = (want if isinstance(want, tuple) else (want,)), (got if isinstance(got, tuple) else (got,))
    g = torch.Generator().manual_seed(123)
    weights = [torch.randn(w.shape, generator=g, dtype=torch.float64) for w in want]
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)
    leaves = [(a, b) for a, b in zip(tri_in, ref_in) if a.requires_grad]
    dgot = torch.autograd.grad(
        sum((o.double() * w).sum() for o, w in zip(got, weights) if o.is_floating_point()),
        [a for a, _ in leaves],
        allow_unused=True,
    )
    dwant = torch.autograd.grad(
        sum((o * w).sum() for o, w in zip(want, weights) if o.is_floating_point()),
        [b for _, b in leaves],
        allow_unused=True,
    )
    for a, b in zip(dgot, dwant):
        if b is not None:
            torch.testing.assert_close(a.double(), b, rtol=10 * rtol, atol=10 * atol)


def test_causal_conv1d_blocks_of_256():
    x, w, b = _rand(0, 2, 3, 300), _rand(1, 3, 4), _rand(2, 3)
    seq = torch.zeros(2, 300, dtype=torch.int32)
    seq[:, 255:] = 1  # a segment starting just before the block edge at 256
    check(
        lambda x, w, b, backend: ops.causal_conv1d_fn(x, w, b, seq_idx=seq, activation="silu", backend=backend),
        [x, w, b],
    )


def test_selective_scan_chunks_of_64():
    from medkernels.triton.selective_scan import chunk_len

    assert chunk_len() == 64
    u, delta = _rand(0, 2, 3, 150), _rand(1, 2, 3, 150, scale=0.3)
    A, B, C = -_rand(2, 3, 5).abs() - 0.1, _rand(3, 2, 5, 150), _rand(4, 2, 5, 150)
    D, z, bias = _rand(5, 3), _rand(6, 2, 3, 150), _rand(7, 3, scale=0.1)

    def fn(u, delta, A, B, C, D, z, bias, backend):
        return ops.selective_scan_fn(
            u,
            delta,
            A.to(torch.float64 if u.dtype == torch.float64 else torch.float32),
            B,
            C,
            D,
            z,
            bias,
            True,
            True,
            backend=backend,
        )

    check(
        lambda u, delta, A, B, C, D, z, bias, backend: fn(u, delta, A, B, C, D, z, bias, backend),
        [u, delta, A, B, C, D, z, bias],
        rtol=5e-5,
        atol=5e-5,
    )


def test_multi_order_scan_chunks_of_64():
    g = torch.Generator().manual_seed(0)
    orders = torch.stack([torch.stack([torch.randperm(70, generator=g) for _ in range(2)])])
    u, delta = _rand(0, 1, 3, 70), _rand(1, 1, 2, 3, 70, scale=0.3)
    A, B, C = -_rand(2, 2, 3, 4).abs() - 0.1, _rand(3, 1, 2, 4, 70), _rand(4, 1, 2, 4, 70)
    D, bias = _rand(5, 2, 3), _rand(6, 2, 3, scale=0.1)
    check(
        lambda u, delta, A, B, C, D, bias, backend: ops.multi_order_selective_scan(
            u, delta, A, B, C, D, bias, orders, backend=backend
        ),
        [u, delta, A, B, C, D, bias],
        rtol=5e-5,
        atol=5e-5,
    )


def test_na_query_blocks_of_32():
    q, k, v = (_rand(s, 1, 7, 6, 2, 8) for s in range(3))  # 42 tokens: two blocks of 32
    rpb = _rand(3, 2, 5, 5, scale=0.1)
    check(
        lambda q, k, v, rpb, backend: ops.na2d(q, k, v, 3, dilation=(2, 1), rpb=rpb, return_lse=True, backend=backend),
        [q, k, v, rpb],
    )
    q, k, v = (_rand(s, 1, 40, 2, 8) for s in range(3))
    check(lambda q, k, v, backend: ops.na1d(q, k, v, 5, is_causal=True, backend=backend), [q, k, v])


def test_rswaf_kan_tiles_of_64():
    x, w = _rand(0, 70, 10), _rand(1, 70, 80, scale=0.1)
    grid = torch.linspace(-2, 2, 8, dtype=torch.float64)
    check(
        lambda x, w, backend: ops.rswaf_kan(x, grid.to(x.dtype), 1 / 0.33, w, backend=backend),
        [x, w],
        rtol=1e-4,
        atol=1e-4,
    )


def test_dilated_attention_blocks_of_64():
    q, k, v = (_rand(s, 1, 4, 8, 9, 1, 8) for s in range(3))  # one group of 288 tokens: 64-token blocks
    check(
        lambda q, k, v, backend: ops.dilated_attention3d(q, k, v, (4, 8, 9), "local", return_lse=True, backend=backend),
        [q, k, v],
    )


def test_dct_blocks_of_64():
    x = _rand(0, 2, 70, 67)
    check(lambda x, backend: ops.dct2d(x, keep=(66, 65), backend=backend), [x])


def test_point_cloud_blocks():
    xyz = _rand(0, 2, 1500, 3)  # FPS sweeps blocks of 1024
    want = ops.furthest_point_sample(xyz, 20, backend="reference")
    assert torch.equal(
        ops.furthest_point_sample(xyz.float(), 20, backend="triton"),
        ops.furthest_point_sample(xyz.float(), 20, backend="reference"),
    )
    assert want.shape == (2, 20)
    q, p = _rand(1, 1, 3, 3), _rand(2, 1, 300, 3)  # kNN: blocks of 128 points
    check(lambda q, p, backend: ops.knn(q, p, 5, backend=backend)[0], [q, p])


def test_every_kernel_with_a_launch_config_is_covered():
    """The launchers whose tiles differ between the interpreter and a GPU are exactly the ones above."""
    import pathlib

    import medkernels.triton as mt

    names = sorted(
        p.stem
        for p in pathlib.Path(mt.__file__).parent.glob("*.py")
        if p.stem != "__init__" and "gpu_configs()" in p.read_text()
    )
    assert names == ["causal_conv1d", "multi_order_scan", "neighborhood_attention", "rswaf_kan", "selective_scan"]
    assert _library.HAS_TRITON
