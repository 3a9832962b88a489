"""pytest fixtures and setup only; the helpers the tests import (tolerances, skips, backend params) are
in tests/kit.py."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter (set before medkernels, and the kit, import triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from medkernels import ops  # noqa: E402

CPU_ISAS = ops.cpu_isas()


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs a test once per compiled CPU instruction set (avx512, avx2, base), restoring the default after."""
    before = ops.cpu_isa()
    ops.set_cpu_isa(request.param)
    yield request.param
    ops.set_cpu_isa(before)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests choose backends explicitly; an exported MEDKERNELS_BACKEND must not leak in."""
    monkeypatch.delenv("MEDKERNELS_BACKEND", raising=False)
