"""The compiled extension, the CPU instruction-set switch and the package surface."""

import os
import platform

import pytest
import torch

import medkernels
from medkernels import ops
from medkernels.ops import _library


def test_extension_is_loaded_with_openmp():
    assert _library.HAS_C, _library.LOAD_ERROR
    assert _library._C.with_openmp, "built without -fopenmp: at::parallel_for would run on one thread"


def test_ops_are_registered_under_the_medkernels_namespace():
    for name in ("selective_scan_fwd", "selective_scan_bwd"):
        assert _library.has_kernel(name, "CPU")
        assert hasattr(torch.ops.medkernels, name)


def test_cpu_isa_switch():
    isas = ops.cpu_isas()
    assert "base" in isas and isas[-1] == "base"
    before = ops.cpu_isa()
    assert before == isas[0], "the default is the widest supported instruction set"
    try:
        for isa in isas:
            ops.set_cpu_isa(isa)
            assert ops.cpu_isa() == isa
        with pytest.raises(ValueError, match="unknown CPU instruction set 'sse9'"):
            ops.set_cpu_isa("sse9")
    finally:
        ops.set_cpu_isa(before)


def test_instruction_sets_follow_the_cpu():
    """x86-64 Linux: avx2 and avx512 are offered exactly when the kernel reports their features (the flags in
    /proc/cpuinfo are those the OS enabled), and the default is the widest."""
    if platform.machine() not in ("x86_64", "AMD64") or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("the x86-64 instruction sets are checked against Linux's /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    want = ["avx512"] if {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags else []
    want += ["avx2"] if {"avx2", "fma", "f16c"} <= flags else []
    assert ops.cpu_isas() == [*want, "base"]


def test_version_and_layers():
    assert medkernels.__version__ != "0.0.0+unknown"
    assert {"ops", "nn", "models"} <= set(medkernels.__all__)
