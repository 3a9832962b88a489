"""FasterKAN (MedViTV2's KAN) cases: ``rswaf_kan``, against the unfused layer."""

from __future__ import annotations

import torch

from medkernels import ops

from .. import peers as _peers
from .base import Case, Peer, Sweep, Target


def kan_case(tokens, in_dim, out_dim, grids, profiles, targets=(), dtypes=(torch.float32,)) -> Case:
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {
            "x": torch.randn(tokens, in_dim, generator=g).to(device, dtype),
            "grid": torch.linspace(-2.0, 2.0, grids, device=device),
            "inv_denominator": torch.tensor(1 / 0.33, device=device),
            "weight": (torch.randn(out_dim, in_dim * grids, generator=g) / (in_dim * grids) ** 0.5).to(device, dtype),
        }

    def call(backend: str, x: dict):
        return ops.rswaf_kan(x["x"], x["grid"], x["inv_denominator"], x["weight"], backend=backend)

    return Case(
        op="rswaf_kan",
        label=f"T={tokens} in={in_dim} out={out_dim} G={grids} (FasterKAN layer after its LayerNorm)",
        params={"tokens": tokens, "in": in_dim, "out": out_dim, "grids": grids},
        profiles=profiles,
        make_inputs=make,
        call=call,
        differentiable=("x", "weight"),
        dtypes=dtypes,
        peers={"unfused": Peer(lambda x: _peers.kan_unfused(x["x"], x["grid"], x["inv_denominator"], x["weight"]))},
        targets=targets,
    )


KAN_TARGETS = (
    Target(
        "forward+backward peak memory <= 1/3 of the unfused layer's",
        "cpu",
        "fwd+bwd",
        "memory",
        1 / 3,
        against="peer:unfused",
    ),
    Target(
        "forward+backward not slower than the unfused layer (basis, then nn.Linear)",
        "cpu",
        "fwd+bwd",
        "speedup",
        1.0,
        against="peer:unfused",
    ),
)


# medkernels-bench --report: MedViTV2's last-stage KAN (512 -> 1024, 8 grids) over the batch of 7 x 7 token maps.
SWEEPS = (
    Sweep(
        "rswaf_kan",
        "batch",
        "batch (x 49 tokens)",
        {"quick": (1, 4), "default": (8, 16, 32, 64)},
        lambda b, quick: kan_case(49 * b, 16 if quick else 512, 16 if quick else 1024, 4 if quick else 8, ()),
    ),
)
