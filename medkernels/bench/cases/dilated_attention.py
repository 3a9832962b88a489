"""D-Former dilated attention cases, against D-Former's official path and SDPA on permuted tokens."""

from __future__ import annotations

import torch

from medkernels import ops

from .. import peers as _peers
from .base import Case, Peer, Target
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
