"""Neighborhood attention cases (``na1d``/``na2d``/``na3d``) against the same-result CPU peer
(``torch.compile(flex_attention)`` with a neighbourhood mask, forward only), natten when installed (0.21 runs its
CPU forward through flex), and dense SDPA over all tokens (what NA avoids)."""

from __future__ import annotations

import importlib.util

import torch

from medkernels import ops

from .. import peers as _peers
from .base import Case, Peer, Sweep, Target


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
    if importlib.util.find_spec("natten") is None:
        return "natten is not installed (pip install natten: 0.21 runs its CPU forward through flex_attention)"
    return None


def _flex_call(kernel: int, dilation: int):
    def call(x: dict):
        return _peers.flex_neighborhood_attention(x["query"], x["key"], x["value"], kernel, dilation)

    return call


def na_case(
    spatial, kernel, dilation, profiles, targets=(), heads=4, dim=32, dtypes=(torch.float32,), flex=True, natten=True
) -> Case:
    """``flex=False`` leaves out the compiled flex peer (seconds of compilation per shape; the quick profile);
    ``natten=False`` natten (0.21's CPU forward is uncompiled flex_attention: seconds per call beyond ~2000 tokens)."""
    na_dim = len(spatial)
    peers = {
        "flex_compiled": Peer(
            _flex_call(kernel, dilation),
            forward_only=True,
            how="torch.compile(flex_attention) with a neighbourhood mask_mod; compiled function and block mask "
            "cached before timing",
            package="torch",
        ),
        "natten": Peer(
            _natten_call(na_dim, kernel, dilation),
            _natten_unavailable,
            forward_only=True,  # natten 0.21 has no CPU backward
            how=f"natten.na{na_dim}d(q, k, v, kernel_size={kernel}, dilation={dilation})",
            package="natten",
        ),
        "sdpa": Peer(
            _sdpa_call,
            how="F.scaled_dot_product_attention over all tokens (a different result: not the vs-peer column)",
            comparable=False,
        ),
    }
    if not flex:
        del peers["flex_compiled"]
    if not natten:
        del peers["natten"]
    return Case(
        op=f"na{na_dim}d",
        label=f"B=1 {'x'.join(map(str, spatial))} K={kernel} d={dilation} heads={heads} head_dim={dim}",
        params={"spatial": list(spatial), "kernel_size": kernel, "dilation": dilation, "heads": heads, "head_dim": dim},
        profiles=profiles,
        make_inputs=na_inputs(spatial, heads, dim),
        call=_na_call(na_dim, kernel, dilation),
        differentiable=("query", "key", "value"),
        dtypes=dtypes,
        peers=peers,
        targets=targets,
    )


def na_targets(three_d: bool) -> tuple[Target, ...]:
    flex = Target("forward >= 10x compiled flex_attention", "cpu", "fwd", "speedup", 10.0, against="peer:flex_compiled")
    if three_d:
        return (Target("forward >= 5x the gather baseline", "cpu", "fwd", "speedup", 5.0), flex)
    return (
        flex,
        Target("forward >= 10x the gather baseline", "cpu", "fwd", "speedup", 10.0),
        Target("forward >= 5x dense SDPA", "cpu", "fwd", "speedup", 5.0, against="peer:sdpa"),
        Target("forward+backward >= 5x the gather baseline's autograd", "cpu", "fwd+bwd", "speedup", 5.0),
    )


# medkernels-bench --report: 2D NA over the resolution (K=7) and the kernel size (32x32), 3D NA over the
# resolution (K=5); 4 heads of 32. natten (when installed) is the same-result peer up to 32x32 and 12^3 tokens (0.21's
# CPU forward is flex_attention without compilation, a dense score matrix: 4 s a call at 64x64); the compiled flex
# peer is left out (seconds of compilation per shape).
SWEEPS = (
    Sweep(
        "na2d",
        "resolution",
        "resolution H = W",
        {"quick": (8, 12), "default": (16, 32, 48, 64)},
        lambda s, quick: na_case(
            (s, s),
            3 if quick else 7,
            1,
            (),
            heads=2 if quick else 4,
            dim=8 if quick else 32,
            flex=False,
            natten=s <= 32,
        ),  # fmt: skip
    ),
    Sweep(
        "na2d",
        "kernel",
        "kernel size K (32 x 32)",
        {"quick": (3, 5), "default": (3, 7, 11, 15)},
        lambda k, quick: na_case(
            (12, 12) if quick else (32, 32), k, 1, (), heads=2 if quick else 4, dim=8 if quick else 32, flex=False
        ),  # fmt: skip
        loglog=False,
    ),
    Sweep(
        "na3d",
        "resolution",
        "resolution D = H = W",
        {"quick": (5, 6), "default": (8, 12, 16)},
        lambda s, quick: na_case(
            (s, s, s),
            3 if quick else 5,
            1,
            (),
            heads=2 if quick else 4,
            dim=8 if quick else 32,
            flex=False,
            natten=s <= 12,
        ),  # fmt: skip
    ),
)
