"""Shared test helpers: seeding, tolerances, device/ISA parametrisation and skip decorators."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter (set before medkernels imports triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from medkernels import ops  # noqa: E402
from medkernels.ops import _library  # noqa: E402

# Long sweeps run when MEDKERNELS_LONG_TESTS=1 (the default suite stays fast).
LONG = os.environ.get("MEDKERNELS_LONG_TESTS", "") not in ("", "0")

# Every test that needs a GPU skips through this one decorator; Triton tests through the other.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
requires_triton = pytest.mark.skipif(not _library.HAS_TRITON, reason="needs triton (pip install triton)")
TEST_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

CPU_ISAS = ops.cpu_isas()


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs a test once per compiled CPU instruction set (avx2, base), restoring the default after."""
    before = ops.cpu_isa()
    ops.set_cpu_isa(request.param)
    yield request.param
    ops.set_cpu_isa(before)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests choose backends explicitly; an exported MEDKERNELS_BACKEND must not leak in."""
    monkeypatch.delenv("MEDKERNELS_BACKEND", raising=False)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str) -> None:
    """assert_close in float32 with a message naming the compared quantity."""
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")
