"""Benchmark cases: what ``medkernels-bench`` times, per op and profile.

A case builds its inputs, calls the op on a named backend (or a peer library), and may state
targets (speed-up and memory ratios against the reference) that the report checks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from medkernels import ops

PROFILES = ("quick", "default", "full", "gpu")


@dataclass(frozen=True)
class Target:
    """A ratio a case must reach: ``metric`` of ``backend`` against the reference, per pass."""

    description: str
    backend: str
    passname: str  # "fwd" or "fwd+bwd"
    metric: str  # "speedup" (reference time / backend time) or "memory" (backend peak / reference peak)
    bound: float  # speedup >= bound, or memory <= bound

    def met(self, value: float) -> bool:
        return value >= self.bound if self.metric == "speedup" else value <= self.bound


@dataclass(frozen=True)
class Case:
    op: str
    label: str
    params: dict
    profiles: tuple[str, ...]
    make_inputs: Callable[[torch.device, torch.dtype], dict]
    call: Callable[[str, dict], object]  # (backend, inputs) -> output tensor(s)
    differentiable: tuple[str, ...]  # inputs that get gradients in the fwd+bwd pass
    dtypes: tuple[torch.dtype, ...] = (torch.float32,)
    reference_backends: tuple[str, ...] = ("reference",)
    peers: dict[str, Callable[[dict], object]] = field(default_factory=dict)
    peer_unavailable: dict[str, str] = field(default_factory=dict)
    targets: tuple[Target, ...] = ()

    def title(self, dtype: torch.dtype) -> str:
        return f"{self.op}  {self.label}  {str(dtype).replace('torch.', '')}"


# --- selective scan -------------------------------------------------------------------------------


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


def _mamba_ssm_unavailable() -> str | None:
    if importlib.util.find_spec("mamba_ssm") is None:
        return "mamba_ssm is not installed (it needs a CUDA build)"
    return None


def _scan_case(batch, dim, dstate, seqlen, bc, profiles, dtypes=(torch.float32,), targets=()) -> Case:
    why = _mamba_ssm_unavailable()
    label = f"B={batch} D={dim} N={dstate} L={seqlen} {bc} B/C, D, z, delta_bias, softplus"
    return Case(
        op="selective_scan",
        label=label,
        params={"batch": batch, "dim": dim, "dstate": dstate, "seqlen": seqlen, "B_C": bc,
                "D": True, "z": True, "delta_bias": True, "delta_softplus": True},
        profiles=profiles,
        make_inputs=_scan_inputs(batch, dim, dstate, seqlen, bc),
        call=_scan_call,
        differentiable=("u", "delta", "A", "B", "C", "D", "z", "delta_bias"),
        dtypes=dtypes,
        peers={} if why else {"mamba_ssm": _mamba_ssm_call},
        peer_unavailable={"mamba_ssm": why} if why else {},
        targets=targets,
    )


ISSUE_TARGETS = (
    Target("forward >= 20x the reference", "cpu", "fwd", "speedup", 20.0),
    Target("forward+backward >= 100x the reference's autograd", "cpu", "fwd+bwd", "speedup", 100.0),
    Target("forward+backward peak memory <= 1/10 of the reference's", "cpu", "fwd+bwd", "memory", 0.1),
)

CASES: list[Case] = [
    _scan_case(1, 16, 4, 64, "variable", ("quick",)),
    _scan_case(2, 768, 16, 1024, "variable", ("default", "full"), (torch.float32,), ISSUE_TARGETS),
    _scan_case(2, 768, 16, 1024, "variable", ("default", "full"), (torch.bfloat16,)),
    _scan_case(1, 256, 16, 4096, "variable", ("default", "full")),
    _scan_case(2, 768, 16, 1024, "fixed", ("full",)),
    _scan_case(1, 1536, 64, 2048, "variable", ("full",)),
    _scan_case(8, 1536, 16, 4096, "variable", ("gpu",), (torch.bfloat16, torch.float32)),
]


def cases_for(profile: str, ops_filter: set[str] | None = None) -> list[Case]:
    """The cases of a profile, optionally only those of some ops."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    return [c for c in CASES if profile in c.profiles and (not ops_filter or c.op in ops_filter)]
