"""Neighborhood attention cases (``na1d``/``na2d``/``na3d``), against dense SDPA and natten."""

from __future__ import annotations

import importlib.util

import torch

from medkernels import ops

from .base import Case, Peer, Target


def na_inputs(spatial: tuple[int, ...], heads: int, dim: int):
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {
            name: torch.randn(1, *spatial, heads, dim, generator=g).to(device, dtype)
            for name in ("query", "key", "value")
        }

    return make


def _na_call(na_dim: int, kernel: int, dilation: int):
    def call(backend: str, x: dict):
        fn = getattr(ops, f"na{na_dim}d")
        return fn(x["query"], x["key"], x["value"], kernel, dilation=dilation, backend=backend)

    return call


def _sdpa_call(x: dict):
    """Dense attention over all tokens (what NA avoids): torch's scaled_dot_product_attention."""
    q, k, v = (t.flatten(1, -3).transpose(1, 2) for t in (x["query"], x["key"], x["value"]))
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _natten_call(na_dim: int, kernel: int, dilation: int):
    def call(x: dict):
        import natten  # type: ignore

        return getattr(natten, f"na{na_dim}d")(x["query"], x["key"], x["value"], kernel_size=kernel, dilation=dilation)

    return call


def _natten_unavailable(device: torch.device) -> str | None:
    return None if importlib.util.find_spec("natten") else "natten is not installed (GPU wheels on a private index)"


def na_case(spatial, kernel, dilation, profiles, targets=(), heads=4, dim=32, dtypes=(torch.float32,)) -> Case:
    na_dim = len(spatial)
    return Case(
        op=f"na{na_dim}d",
        label=f"B=1 {'x'.join(map(str, spatial))} K={kernel} d={dilation} heads={heads} head_dim={dim}",
        params={"spatial": list(spatial), "kernel_size": kernel, "dilation": dilation, "heads": heads, "head_dim": dim},
        profiles=profiles,
        make_inputs=na_inputs(spatial, heads, dim),
        call=_na_call(na_dim, kernel, dilation),
        differentiable=("query", "key", "value"),
        dtypes=dtypes,
        peers={"sdpa": Peer(_sdpa_call), "natten": Peer(_natten_call(na_dim, kernel, dilation), _natten_unavailable)},
        targets=targets,
    )


def na_targets(three_d: bool) -> tuple[Target, ...]:
    if three_d:
        return (Target("forward >= 5x the gather baseline", "cpu", "fwd", "speedup", 5.0),)
    return (
        Target("forward >= 10x the gather baseline", "cpu", "fwd", "speedup", 10.0),
        Target("forward >= 5x dense SDPA", "cpu", "fwd", "speedup", 5.0, against="peer:sdpa"),
        Target("forward+backward >= 5x the gather baseline's autograd", "cpu", "fwd+bwd", "speedup", 5.0),
    )
