"""Multi-order selective scan cases (PointMamba2's group Point-SSM), against the official path (K permuted copies
through mamba_ssm's reference form, what flemme runs without CUDA; full profile, reduced size) and the same
copies through our own scan."""

from __future__ import annotations

import torch

from medkernels import ops

from .. import peers as _peers
from .base import Case, Peer, Sweep, Target


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


def _multi_scan_copies(x: dict, scan=None):
    """PointMamba2's way: per ordering, permuted copies of u, delta, B, C, one selective scan (``scan``: ours
    on the best backend here by default), the output scattered back, the K outputs summed."""
    scan = scan or ops.selective_scan_fn
    u, orders = x["u"], x["orders"]
    out = None
    for k in range(orders.shape[1]):
        o = orders[:, k, None, :]
        ou, ob = o.expand_as(u), o.expand_as(x["B"][:, k])
        y = scan(
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


def multi_scan_case(batch, dim, dstate, seqlen, K, profiles, targets=(), with_reference=False, official=False) -> Case:
    """``official``: also time the official path (copies through mamba_ssm's reference form; seconds per call)."""
    # K reference scans at the size take minutes: only the full profile lists the reference.
    peers = {"8_copies": Peer(_multi_scan_copies, how="per ordering: gather, our selective_scan_fn, scatter")}
    if official:
        peers["official_copies"] = Peer(
            lambda x: _multi_scan_copies(x, _peers.selective_scan_mamba_form),
            how="per ordering: gather, mamba_ssm's selective_scan_ref form, scatter (flemme without CUDA)",
        )
    return Case(
        op="multi_order_selective_scan",
        label=f"B={batch} D={dim} N={dstate} L={seqlen} K={K} D, delta_bias, softplus",
        params={"batch": batch, "dim": dim, "dstate": dstate, "seqlen": seqlen, "K": K},
        profiles=profiles,
        make_inputs=_multi_scan_inputs(batch, dim, dstate, seqlen, K),
        call=lambda backend, x: ops.multi_order_selective_scan(**x, backend=backend),
        differentiable=("u", "delta", "A", "B", "C", "D", "delta_bias"),
        reference_backends=("reference",) if with_reference else (),
        peers=peers,
        targets=targets,
    )


MULTI_SCAN_TARGETS = (
    Target(
        "forward+backward >= 1.3x the 8-copies path on our own scan",  # restated from 2x (issue 17)
        "cpu",
        "fwd+bwd",
        "speedup",
        1.3,
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


# medkernels-bench --report: PointMamba2's level-1 group scan (D=128, N=64, K=8 orderings) over the point count;
# against the 8-copies path (the reference, K Python loops over L, takes tens of seconds a point: quick profile only).
SWEEPS = (
    Sweep(
        "multi_order_selective_scan",
        "points",
        "points L (K orderings each)",
        {"quick": (16, 64), "default": (256, 1024, 2048)},
        lambda L, quick: multi_scan_case(
            1, 8 if quick else 128, 4 if quick else 64, L, 4 if quick else 8, (), with_reference=quick
        ),
    ),
)
