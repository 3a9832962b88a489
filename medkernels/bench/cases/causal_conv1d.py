"""Causal conv1d cases, against a padded depthwise ``F.conv1d``."""

from __future__ import annotations

import torch

from medkernels import ops

from .base import Case, Peer, Sweep


def _conv_inputs(batch, dim, seqlen, width):
    def make(device, dtype):
        g = torch.Generator().manual_seed(0)
        return {
            "x": torch.randn(batch, dim, seqlen, generator=g).to(device, dtype),
            "weight": torch.randn(dim, width, generator=g).to(device, dtype),
            "bias": torch.randn(dim, generator=g).to(device, dtype),
        }

    return make


def _conv_torch(x: dict):
    """What a model does without causal-conv1d: a padded depthwise nn.functional.conv1d, cropped, SiLU."""
    w = x["weight"]
    out = torch.nn.functional.conv1d(x["x"], w[:, None], x["bias"], padding=w.shape[1] - 1, groups=w.shape[0])
    return torch.nn.functional.silu(out[..., : x["x"].shape[-1]])


def conv_case(batch, dim, seqlen, width, profiles) -> Case:
    return Case(
        op="causal_conv1d",
        label=f"B={batch} D={dim} L={seqlen} W={width} bias, silu",
        params={"batch": batch, "dim": dim, "seqlen": seqlen, "width": width},
        profiles=profiles,
        make_inputs=_conv_inputs(batch, dim, seqlen, width),
        call=lambda backend, x: ops.causal_conv1d_fn(
            x["x"], x["weight"], x["bias"], activation="silu", backend=backend
        ),
        differentiable=("x", "weight", "bias"),
        peers={"torch_conv1d": Peer(_conv_torch)},
    )


# medkernels-bench --report: a conv of 256 channels, width 4, over the sequence length.
SWEEPS = (
    Sweep(
        "causal_conv1d",
        "seqlen",
        "sequence length L",
        {"quick": (64, 256), "default": (1024, 4096, 16384)},
        lambda L, quick: conv_case(1, 16 if quick else 256, L, 4, ()),
    ),
)
