"""Multi-order selective scan cases (PointMamba2's group Point-SSM), against the 8-copies path."""

from __future__ import annotations

import torch

from medkernels import ops

from .base import Case, Peer, Target


def _multi_scan_inputs(batch: int, dim: int, dstate: int, seqlen: int, K: int):
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {
            "u": torch.randn(batch, dim, seqlen, generator=g).to(device, dtype),
            "delta": (0.5 * torch.rand(batch, K, dim, seqlen, generator=g)).to(device, dtype),
            "A": (-torch.rand(K, dim, dstate, generator=g) - 0.5).to(device),
            "B": torch.randn(batch, K, dstate, seqlen, generator=g).to(device, dtype),
            "C": torch.randn(batch, K, dstate, seqlen, generator=g).to(device, dtype),
            "D": torch.randn(K, dim, generator=g).to(device),
            "delta_bias": (0.5 * torch.rand(K, dim, generator=g)).to(device),
            "orders": torch.argsort(torch.rand(batch, K, seqlen, generator=g), dim=-1).to(device),
        }

    return make


def _multi_scan_copies(x: dict):
    """PointMamba2's way: per ordering, permuted copies of u, delta, B, C, one selective scan (ours,
    on the best backend here), the output scattered back, the K outputs summed."""
    u, orders = x["u"], x["orders"]
    out = None
    for k in range(orders.shape[1]):
        o = orders[:, k, None, :]
        ou, ob = o.expand_as(u), o.expand_as(x["B"][:, k])
        y = ops.selective_scan_fn(
            u.gather(2, ou),
            x["delta"][:, k].gather(2, ou),
            x["A"][k],
            x["B"][:, k].gather(2, ob),
            x["C"][:, k].gather(2, ob),
            x["D"][k],
            None,
            x["delta_bias"][k],
            True,
        )
        y = torch.zeros_like(y).scatter(2, ou, y)
        out = y if out is None else out + y
    return out


def multi_scan_case(batch, dim, dstate, seqlen, K, profiles, targets=(), with_reference=False) -> Case:
    # K reference scans at the size take minutes: only the full profile lists the reference.
    return Case(
        op="multi_order_selective_scan",
        label=f"B={batch} D={dim} N={dstate} L={seqlen} K={K} D, delta_bias, softplus",
        params={"batch": batch, "dim": dim, "dstate": dstate, "seqlen": seqlen, "K": K},
        profiles=profiles,
        make_inputs=_multi_scan_inputs(batch, dim, dstate, seqlen, K),
        call=lambda backend, x: ops.multi_order_selective_scan(**x, backend=backend),
        differentiable=("u", "delta", "A", "B", "C", "D", "delta_bias"),
        reference_backends=("reference",) if with_reference else (),
        peers={"8_copies": Peer(_multi_scan_copies)},
        targets=targets,
    )


MULTI_SCAN_TARGETS = (
    Target(
        "forward+backward >= 2x the 8-copies path on our own scan",
        "cpu",
        "fwd+bwd",
        "speedup",
        2.0,
        against="peer:8_copies",
    ),
    Target(
        "forward+backward peak memory <= 1/2 of the 8-copies path",
        "cpu",
        "fwd+bwd",
        "memory",
        0.5,
        against="peer:8_copies",
    ),
)
