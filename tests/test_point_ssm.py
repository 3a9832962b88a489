"""PointSSMGroupBlock (PointMamba2's group Point-SSM): the block on the CPU kernels equals the same
block on the reference ops, gradients flow, orderings, state_dict names, bad config."""

from __future__ import annotations

import pytest
import torch
from conftest import close

from medkernels.nn import PointSSMGroupBlock, point_scan_orders


def _block_and_inputs(dim=16, L=37, batch=2, d_state=8, seed=0):
    torch.manual_seed(seed)
    block = PointSSMGroupBlock(dim, d_state=d_state)
    x = torch.randn(batch, L, dim)
    xyz = torch.randn(batch, L, 3)
    return block, x, xyz


def test_block_equals_the_block_on_reference_ops():
    block, x, xyz = _block_and_inputs()
    outs, grads = [], []
    for backend in ("cpu", "reference"):
        block.backend = backend
        xi = x.clone().requires_grad_(True)
        out = block(xi, xyz)
        out.square().sum().backward()
        outs.append(out)
        grads.append([xi.grad] + [p.grad.clone() for p in block.parameters()])
        block.zero_grad()
    close(outs[0], outs[1], 1e-4, 1e-4, "out")
    names = ["x"] + [n for n, _ in block.named_parameters()]
    for name, a, b in zip(names, *grads):
        assert a is not None and torch.isfinite(a).all(), name
        close(a, b, 1e-3, 1e-3 * (b.abs().max().item() + 1), f"d{name}")
    assert all(g.abs().sum() > 0 for g in grads[0]), "every parameter gets a gradient"


def test_orderings():
    xyz = torch.randn(2, 10, 3)
    orders = point_scan_orders(xyz)
    assert orders.shape == (2, 8, 10) and orders.dtype == torch.int64
    assert torch.equal(orders[:, 0], xyz[..., 0].argsort(-1))
    assert torch.equal(orders[:, 4], orders[:, 0].flip(-1))
    d = (xyz - xyz.mean(1, keepdim=True)).norm(dim=-1)
    assert torch.all(d.gather(1, orders[:, 3]).diff(dim=1) >= 0)  # inside-out


def test_precomputed_orders_and_state_dict_names():
    block, x, xyz = _block_and_inputs(dim=8, L=9, d_state=4)
    assert torch.equal(block(x, xyz), block(x, orders=point_scan_orders(xyz)))
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    # The official PointScanMambaNonFFNBlock's names and layouts (flemme/block/pmamba.py).
    assert shapes["x_proj_weight"] == (8, 1 + 2 * 4, 16)
    assert shapes["dt_projs_weight"] == (8, 16, 1) and shapes["dt_projs_bias"] == (8, 16)
    assert shapes["A_logs"] == (8 * 16, 4) and shapes["Ds"] == (8 * 16,)
    assert shapes["in_proj.weight"] == (32, 8) and shapes["conv.weight"] == (16, 1, 4)
    assert shapes["out_proj.weight"] == (8, 16) and "norm.weight" in shapes
    assert "scans=8" in repr(block)


@pytest.mark.parametrize("kwargs,match", [
    ({"dim": 12}, r"dim=12 must be divisible by num_groups=8"),
    ({"dim": 16, "d_state": 0}, r"d_state must be a positive int"),
    ({"dim": 16, "dt_min": 0.2}, r"need 0 < dt_min <= dt_max"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PointSSMGroupBlock(**kwargs)


def test_bad_forward_inputs():
    block, x, xyz = _block_and_inputs(dim=8, L=9, d_state=4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, 8\)"):
        block(x[..., :4], xyz)
    with pytest.raises(ValueError, match=r"xyz must have shape \(B, L, 3\)"):
        block(x, xyz[:, :5])
    with pytest.raises(ValueError, match=r"pass xyz"):
        block(x)
    with pytest.raises(ValueError, match=r"orders\[0, 0\] is not a permutation"):
        block(x, orders=torch.zeros(2, 8, 9, dtype=torch.int64))
