"""D-Former dilated attention cases: the op against D-Former's official path and SDPA on permuted tokens, and the
whole block against the official block (which groups its input once)."""

from __future__ import annotations

import torch

from medkernels import ops, testing

from .. import peers as _peers
from .base import Case, Peer, Sweep, Target
from .neighborhood_attention import na_inputs


def da_case(spatial, group, scope, profiles, targets=(), heads=3, dim=32, dtypes=(torch.float32,)) -> Case:
    def call(backend: str, x: dict):
        return ops.dilated_attention3d(x["query"], x["key"], x["value"], group, scope, backend=backend)

    def peer(fn):
        return Peer(lambda x: fn(x["query"], x["key"], x["value"], group, scope))

    return Case(
        op="dilated_attention3d",
        label=f"B=1 {'x'.join(map(str, spatial))} group={'x'.join(map(str, group))} {scope} heads={heads} "
        f"head_dim={dim}",
        params={"spatial": list(spatial), "group_size": list(group), "scope": scope, "heads": heads, "head_dim": dim},
        profiles=profiles,
        make_inputs=na_inputs(spatial, heads, dim),
        call=call,
        differentiable=("query", "key", "value"),
        dtypes=dtypes,
        peers={"official": peer(_peers.dformer_attention_official), "sdpa": peer(_peers.dformer_attention_sdpa)},
        targets=targets,
    )


DA_TARGETS = (
    Target(
        "forward >= 1.5x the official pad-reshape-permute path", "cpu", "fwd", "speedup", 1.5, against="peer:official"
    ),
    Target("forward+backward >= 1.5x the official path", "cpu", "fwd+bwd", "speedup", 1.5, against="peer:official"),
    Target("forward not slower than SDPA on permuted tokens", "cpu", "fwd", "speedup", 1.0, against="peer:sdpa"),
    Target(
        "forward+backward not slower than SDPA on permuted tokens",
        "cpu",
        "fwd+bwd",
        "speedup",
        1.0,
        against="peer:sdpa",
    ),
)


def dformer_block_case(spatial, dim, heads, group, scope, interval, profiles, targets=()) -> Case:
    """A whole ``nn.DFormerBlock`` (norm, attention, MLP, residuals) on ``[1, *spatial, dim]`` tokens against the
    official block, which pads and permutes the block input into groups once before its qkv projection (the
    fair comparison for the grouping: the op-level peers above group q, k and v separately). No target: the
    block is mostly its Linear layers, the same GEMMs in both (measured 1.18x forward, 1.28x forward+backward on
    2 quiet cores); no reference row (the default run's time budget)."""

    def make(device: torch.device, dtype: torch.dtype) -> dict:
        from medkernels.nn import DFormerBlock

        torch.manual_seed(0)
        interval_arg = interval if scope == "global" else None
        block = DFormerBlock(dim, heads, group, scope, interval=interval_arg, device=device, dtype=dtype)
        x = torch.randn(1, *spatial, dim, generator=torch.Generator().manual_seed(1)).to(device, dtype)
        return {"x": x, "block": block}

    def call(backend: str, x: dict):
        x["block"].attn.backend = backend
        return x["block"](x["x"])

    def official(x: dict):
        params = dict(x["block"].named_parameters())
        return testing.dformer_block_official(params, x["x"], heads, group, scope, interval)

    return Case(
        op="dformer_block",
        label=f"B=1 {'x'.join(map(str, spatial))} C={dim} heads={heads} group={'x'.join(map(str, group))} {scope}"
        + (f" interval={interval}" if scope == "global" else "")
        + " (nn.DFormerBlock)",
        params={"spatial": list(spatial), "dim": dim, "heads": heads, "group_size": list(group), "scope": scope},
        profiles=profiles,
        make_inputs=make,
        call=call,
        differentiable=("x",),
        reference_backends=(),
        peers={
            "official_block": Peer(
                official,
                how="medkernels.testing.dformer_block_official: model.py's DFormerBlock3D (the block input grouped "
                "once, dense masked softmax), same weights",
            )
        },
        targets=targets,
        parameters=lambda x: list(x["block"].parameters()),
    )


# medkernels-bench --report: D-Former's global-scope attention (groups 2x8x8, 3 heads of 32) over the cube's edge.
SWEEPS = (
    Sweep(
        "dilated_attention3d",
        "resolution",
        "resolution D = H = W",
        {"quick": (8, 16), "default": (16, 24, 32)},
        lambda s, quick: da_case((s, s, s), (2, 8, 8), "global", (), heads=2 if quick else 3, dim=16 if quick else 32),
    ),
)
