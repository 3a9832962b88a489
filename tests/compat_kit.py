"""Helpers of the medkernels.compat tests: a clean import state around each test."""

from __future__ import annotations

import sys

import pytest

import medkernels.compat as compat

SERVED = ("natten", "mamba_ssm", "causal_conv1d", "selective_scan_cuda", "causal_conv1d_cuda")


def drop_modules(names=SERVED) -> None:
    """Removes ``names`` and their submodules from ``sys.modules`` (served or fake-real ones alike)."""
    for key in list(sys.modules):
        if key.partition(".")[0] in names:
            del sys.modules[key]


@pytest.fixture(name="compat")
def compat_fixture():
    """No finder and none of the served names imported, before and after the test."""
    compat.uninstall()
    drop_modules()
    yield compat
    compat.uninstall()
    drop_modules()
