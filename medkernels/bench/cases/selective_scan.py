"""Selective scan cases (Mamba's ``selective_scan_fn``), against our linear-time reference, mamba_ssm's own
reference form (``selective_scan_ref``: what mamba_ssm-based code runs without CUDA; in the full profile, at
L=256, where it takes seconds) and mamba_ssm's CUDA kernels when installed."""

from __future__ import annotations

import importlib.util

import torch

from medkernels import ops

from .. import peers as _peers
from .base import Case, Peer, Sweep, Target


def _scan_inputs(batch: int, dim: int, dstate: int, seqlen: int, bc: str):
    def make(device: torch.device, dtype: torch.dtype) -> dict:
        g = torch.Generator().manual_seed(0)

        def randn(*shape, scale=1.0):
            return (scale * torch.randn(*shape, generator=g)).to(device)

        var = (batch, dstate, seqlen)
        return {
            "u": randn(batch, dim, seqlen).to(dtype),
            "delta": (0.5 * torch.rand(batch, dim, seqlen, generator=g)).to(device, dtype),
            "A": (-torch.rand(dim, dstate, generator=g) - 0.5).to(device),
            "B": randn(*var).to(dtype) if bc == "variable" else randn(dim, dstate),
            "C": randn(*var).to(dtype) if bc == "variable" else randn(dim, dstate),
            "D": randn(dim),
            "z": randn(batch, dim, seqlen).to(dtype),
            "delta_bias": (0.5 * torch.rand(dim, generator=g)).to(device),
        }

    return make


def _scan_call(backend: str, x: dict):
    if backend == "reference":
        return ops.selective_scan_ref(**x, delta_softplus=True)
    return ops.selective_scan_fn(**x, delta_softplus=True, backend=backend)


def _mamba_ssm_call(x: dict):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as peer  # type: ignore

    return peer(**x, delta_softplus=True)


def _mamba_ssm_unavailable(device: torch.device) -> str | None:
    if importlib.util.find_spec("mamba_ssm") is None:
        return "mamba_ssm is not installed (it needs a CUDA build)"
    if device.type != "cuda":
        return "mamba_ssm runs on CUDA only"
    return None


def scan_case(
    batch, dim, dstate, seqlen, bc, profiles, dtypes=(torch.float32,), targets=(), reference=True, mamba_form=False
) -> Case:
    """``mamba_form``: also time mamba_ssm's reference form (a Python loop over ``[B, D, L, N]`` tensors)."""
    peers = {"mamba_ssm": Peer(_mamba_ssm_call, _mamba_ssm_unavailable, how="selective_scan_fn", package="mamba_ssm")}
    if mamba_form:
        peers["mamba_ssm_ref_form"] = Peer(
            lambda x: _peers.selective_scan_mamba_form(**x, delta_softplus=True),
            how="medkernels.testing.selective_scan_mamba_form: mamba_ssm's selective_scan_ref restated (per-step "
            "indexing loop over materialised [B, D, L, N] tensors)",
        )
    label = f"B={batch} D={dim} N={dstate} L={seqlen} {bc} B/C, D, z, delta_bias, softplus"
    return Case(
        op="selective_scan",
        label=label,
        params={
            "batch": batch,
            "dim": dim,
            "dstate": dstate,
            "seqlen": seqlen,
            "B_C": bc,
            "D": True,
            "z": True,
            "delta_bias": True,
            "delta_softplus": True,
        },
        profiles=profiles,
        make_inputs=_scan_inputs(batch, dim, dstate, seqlen, bc),
        call=_scan_call,
        differentiable=("u", "delta", "A", "B", "C", "D", "z", "delta_bias"),
        dtypes=dtypes,
        reference_backends=("reference",) if reference else (),
        peers=peers,
        targets=targets,
    )


ISSUE_TARGETS = (
    Target("forward >= 20x the reference", "cpu", "fwd", "speedup", 20.0),
    # restated from 100x (issue 17): our reference is linear-time (one unbind, no [B, D, L, N] tensors)
    Target("forward+backward >= 40x the linear-time reference's autograd", "cpu", "fwd+bwd", "speedup", 40.0),
    Target("forward+backward peak memory <= 1/10 of the reference's", "cpu", "fwd+bwd", "memory", 0.1),
)


MAMBA_FORM_TARGETS = (
    Target(
        "forward+backward >= 150x mamba_ssm's selective_scan_ref",
        "cpu",
        "fwd+bwd",
        "speedup",
        150.0,
        against="peer:mamba_ssm_ref_form",
    ),
    Target("forward+backward >= 40x the linear-time reference's autograd", "cpu", "fwd+bwd", "speedup", 40.0),
)


# medkernels-bench --report: one Mamba layer's scan (D=256, N=16) over the sequence length; the reference (a Python
# loop over L) up to L=1024 (seconds per call beyond).
SWEEPS = (
    Sweep(
        "selective_scan",
        "seqlen",
        "sequence length L",
        {"quick": (16, 64), "default": (256, 1024, 4096, 16384)},
        lambda L, quick: scan_case(1, 16 if quick else 256, 4 if quick else 16, L, "variable", (), reference=L <= 1024),
    ),
)
