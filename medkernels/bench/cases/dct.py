"""DCT cases: ``dct2d`` at kernel level (against ``torch.fft`` and scipy's ``dctn``; the reference is two matmuls
with cached bases) and the DCT attention module (``medkernels.nn.DCTAttention``: against the same module on the
reference ops, and full spatial attention, which measures the architecture rather than the kernel)."""

from __future__ import annotations

import torch

from medkernels import ops

from .. import peers as _peers
from .base import Case, Peer, Sweep


def dct_attention_case(batch, dim, size, heads, keep, profiles, targets=()) -> Case:
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        from medkernels.nn import DCTAttention

        torch.manual_seed(0)
        module = DCTAttention(dim, heads, keep, device=device, dtype=dtype)
        return {"x": torch.randn(batch, dim, size, size, device=device, dtype=dtype), "module": module}

    def call(backend: str, x: dict):
        x["module"].backend = backend
        return x["module"](x["x"])

    def spatial(x: dict):
        m = x["module"]
        return _peers.spatial_attention(x["x"], m.qkv.weight, m.qkv.bias, m.proj.weight, m.proj.bias, heads)

    return Case(
        op="dct_attention",
        label=f"B={batch} C={dim} {size}x{size} heads={heads} keep={keep} (medkernels.nn.DCTAttention)",
        params={"batch": batch, "dim": dim, "size": size, "heads": heads, "keep": keep},
        profiles=profiles,
        make_inputs=make,
        call=call,
        differentiable=("x",),
        peers={"spatial_attention": Peer(spatial)},
        targets=targets,
        parameters=lambda x: list(x["module"].parameters()),
    )


def dct_case(batch, channels, size, keep, profiles) -> Case:
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)
        return {"x": torch.randn(batch, channels, size, size, generator=g).to(device, dtype)}

    return Case(
        op="dct2d",
        label=f"B={batch} C={channels} {size}x{size} keep={keep}x{keep} (against two matmuls with cached bases)",
        params={"batch": batch, "channels": channels, "size": size, "keep": keep},
        profiles=profiles,
        make_inputs=make,
        call=lambda backend, x: ops.dct2d(x["x"], keep=(keep, keep), backend=backend),
        differentiable=("x",),
        peers={
            "torch_fft": Peer(
                lambda x: _peers.dct2d_fft(x["x"], (keep, keep)),
                how="an orthonormal DCT-II per axis through torch.fft.fft of the even/odd reordering (Makhoul), "
                "then the keep corner",
                package="torch",
            ),
            "scipy_dctn": Peer(
                lambda x: _peers.scipy_dctn(x["x"], (keep, keep)),
                _scipy_cpu,
                forward_only=True,
                how="scipy.fft.dctn(x, type=2, norm='ortho', axes=(-2, -1)), then the keep corner (numpy)",
                package="scipy",
                torch_memory=False,
            ),
        },
    )


def _scipy_cpu(device: torch.device) -> str | None:
    import importlib.util

    if importlib.util.find_spec("scipy") is None:
        return "scipy is not installed (pip install scipy)"
    return None if device.type == "cpu" else "scipy runs on the CPU only"


# medkernels-bench --report: dct2d (8 x 64 channels, half the coefficients kept per axis) and DCT attention
# (2 x 64 channels, 2 heads; full spatial attention, the peer, grows with the square of the pixels) over the
# resolution.
SWEEPS = (
    Sweep(
        "dct2d",
        "resolution",
        "resolution H = W",
        {"quick": (8, 16), "default": (28, 56, 112, 224)},
        lambda s, quick: dct_case(1 if quick else 8, 4 if quick else 64, s, s // 2, ()),
    ),
    Sweep(
        "dct_attention",
        "resolution",
        "resolution H = W",
        {"quick": (8, 16), "default": (14, 28, 56)},
        lambda s, quick: dct_attention_case(1 if quick else 2, 8 if quick else 64, s, 2, 0.25, ()),
    ),
)
