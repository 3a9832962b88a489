"""Bad input across the ops: a ValueError/TypeError naming the argument (never a ZeroDivisionError, a
reshape error or a result computed from garbage); meta tensors get shape-only results; the references
handle the zero-size cases the kernels handle (issue 11). Op-specific checks live in each op's test file."""

from __future__ import annotations

import pytest
import torch

from medkernels import nn as mknn
from medkernels import ops


def qkv(*shape, device="cpu"):
    return [torch.randn(*shape, device=device) for _ in range(3)]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_head_dim_zero(backend):
    with pytest.raises(ValueError, match=r"na2d: head_dim .* must be >= 1, got 0"):
        ops.na2d(*qkv(1, 8, 8, 2, 0), 3, backend=backend)
    with pytest.raises(ValueError, match=r"dilated_attention3d: head_dim .* must be >= 1, got 0"):
        ops.dilated_attention3d(*qkv(1, 4, 4, 4, 2, 0), 2, "local", backend=backend)


@pytest.mark.parametrize("scale", [torch.tensor([1.0, 2.0]), torch.ones(1, 2), torch.tensor(1j)])
def test_scale_must_be_one_real_number(scale):
    with pytest.raises(ValueError, match="na1d: scale must be a real number or a one-element tensor"):
        ops.na1d(*qkv(1, 8, 2, 4), 3, scale=scale)
    with pytest.raises(ValueError, match="dilated_attention3d: scale must be a real number"):
        ops.dilated_attention3d(*qkv(1, 4, 4, 4, 2, 4), 2, "global", scale=scale)
    with pytest.raises(TypeError, match="na1d: scale must be a float"):
        ops.na1d(*qkv(1, 8, 2, 4), 3, scale="0.5")


def test_one_element_tensor_scale_equals_the_float():
    q, k, v = qkv(1, 8, 2, 4)
    assert torch.equal(ops.na1d(q, k, v, 3, scale=torch.tensor([0.3])), ops.na1d(q, k, v, 3, scale=0.3))


@pytest.mark.parametrize("shape", [(2, 0, 5), (2, 5, 0), (0, 0)])
def test_dct_of_no_samples(shape):
    for fn in (ops.dct2d, ops.idct2d):
        with pytest.raises(ValueError, match=r"dct2d: x's last two axes \(H, W\) must be >= 1"):
            fn(torch.randn(shape))


def test_mamba_empty_sequence():
    m = mknn.Mamba(16)
    out = m(torch.randn(2, 0, 16))
    assert out.shape == (2, 0, 16)
    out.sum().backward()  # a graph with no tokens still backpropagates (zero gradients)
    assert m.in_proj.weight.grad is not None and not bool(m.in_proj.weight.grad.any())


@pytest.mark.parametrize(
    "cls,shape",
    [
        (mknn.NeighborhoodAttention1D, (1, 16, 9)),
        (mknn.NeighborhoodAttention2D, (1, 16, 8, 9)),
        (mknn.NeighborhoodAttention3D, (1, 16, 4, 5, 6)),
    ],
)
def test_na_module_channels_first_input_names_the_layout(cls, shape):
    with pytest.raises(
        ValueError, match=r"expected embedding dimension 16.*channels-last \[B, X0.*, C\].*must be permuted"
    ):
        cls(16, 2, 3)(torch.randn(shape))


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


META_CALLS = {
    "furthest_point_sample": (lambda: ops.furthest_point_sample(meta(2, 100, 3), 10), [(2, 10)]),
    "furthest_point_sample lengths": (
        lambda: ops.furthest_point_sample(meta(2, 100, 3), 10, lengths=meta(2, dtype=torch.int64)),
        [(2, 10)],
    ),
    "knn": (
        lambda: ops.knn(meta(2, 10, 3), meta(2, 100, 3), 4, lengths=meta(2, dtype=torch.int64)),
        [(2, 10, 4), (2, 10, 4)],
    ),
    "dilated_attention3d": (
        lambda: ops.dilated_attention3d(*[meta(1, 5, 4, 6, 2, 4)] * 3, 2, "global", return_lse=True),
        [(1, 5, 4, 6, 2, 4), (1, 5, 4, 6, 2)],
    ),
    "na2d": (lambda: ops.na2d(*[meta(1, 8, 8, 2, 4)] * 3, 3), [(1, 8, 8, 2, 4)]),
    "selective_scan_fn": (
        lambda: ops.selective_scan_fn(meta(1, 4, 8), meta(1, 4, 8), meta(4, 3), meta(4, 3), meta(4, 3)),
        [(1, 4, 8)],
    ),
    "dct2d": (lambda: ops.dct2d(meta(2, 5, 6), keep=(3, 2)), [(2, 3, 2)]),
    "rswaf_kan": (lambda: ops.rswaf_kan(meta(2, 5), meta(8), 3.0, meta(4, 40)), [(2, 4)]),
    "causal_conv1d_fn": (lambda: ops.causal_conv1d_fn(meta(1, 4, 8), meta(4, 3)), [(1, 4, 8)]),
    "multi_order_selective_scan": (
        lambda: ops.multi_order_selective_scan(
            meta(1, 4, 8),
            meta(1, 2, 4, 8),
            meta(2, 4, 3),
            meta(1, 2, 3, 8),
            meta(1, 2, 3, 8),
            None,
            None,
            meta(1, 2, 8, dtype=torch.int64),
        ),
        [(1, 4, 8)],
    ),
}


@pytest.mark.parametrize("name", sorted(META_CALLS))
def test_meta_tensors_give_shape_only_results(name):
    call, shapes = META_CALLS[name]
    out = call()
    outs = out if isinstance(out, tuple) else (out,)
    assert [tuple(o.shape) for o in outs] == shapes and all(o.device.type == "meta" for o in outs)


ZERO_SIZE = {
    "na2d batch 0": lambda backend: ops.na2d(*qkv(0, 8, 8, 2, 4), 3, backend=backend),
    "na2d_qk batch 0": lambda backend: ops.na2d_qk(*qkv(0, 2, 8, 8, 4)[:2], 3, backend=backend),
    "na2d_av batch 0": lambda backend: ops.na2d_av(
        torch.randn(0, 2, 8, 8, 9), torch.randn(0, 2, 8, 8, 4), 3, backend=backend
    ),
    "na3d batch 0": lambda backend: ops.na3d(*qkv(0, 4, 4, 4, 2, 4), 3, backend=backend),
    "dilated batch 0": lambda backend: ops.dilated_attention3d(*qkv(0, 4, 4, 4, 2, 4), 2, "local", backend=backend),
    "scan batch 0": lambda backend: ops.selective_scan_fn(
        torch.randn(0, 4, 8),
        torch.randn(0, 4, 8),
        torch.randn(4, 3),
        torch.randn(4, 3),
        torch.randn(4, 3),
        backend=backend,
    ),
    "scan seqlen 0": lambda backend: ops.selective_scan_fn(
        torch.randn(1, 4, 0),
        torch.randn(1, 4, 0),
        torch.randn(4, 3),
        torch.randn(4, 3),
        torch.randn(4, 3),
        backend=backend,
    ),
    "dct batch 0": lambda backend: ops.dct2d(torch.randn(0, 5, 5), backend=backend),
    "fps batch 0": lambda backend: ops.furthest_point_sample(torch.randn(0, 5, 3), 2, backend=backend),
    "knn no queries": lambda backend: ops.knn(torch.randn(1, 0, 3), torch.randn(1, 5, 3), 2, backend=backend)[1],
    "kan no tokens": lambda backend: ops.rswaf_kan(
        torch.randn(0, 5), torch.randn(8), 3.0, torch.randn(4, 40), backend=backend
    ),
    "kan no channels": lambda backend: ops.rswaf_kan(
        torch.randn(3, 0), torch.randn(8), 3.0, torch.randn(4, 0), backend=backend
    ),
    "conv seqlen 0": lambda backend: ops.causal_conv1d_fn(torch.randn(1, 4, 0), torch.randn(4, 3), backend=backend),
}


@pytest.mark.parametrize("name", sorted(ZERO_SIZE))
def test_reference_handles_the_zero_size_cases_the_kernels_handle(name):
    got, want = ZERO_SIZE[name]("cpu"), ZERO_SIZE[name]("reference")
    assert got.shape == want.shape and torch.equal(got, want)
