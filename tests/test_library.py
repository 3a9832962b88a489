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
    """x86-64 Linux: avx2, avx512 and avx512bf16 are offered exactly when the kernel reports their features (the
    flags in /proc/cpuinfo are those the OS enabled), and the default is the widest."""
    if platform.machine() not in ("x86_64", "AMD64") or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("the x86-64 instruction sets are checked against Linux's /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    avx512 = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    want = ["avx512bf16"] if avx512 and "avx512_bf16" in flags else []
    want += ["avx512"] if avx512 else []
    want += ["avx2"] if {"avx2", "fma", "f16c"} <= flags else []
    assert ops.cpu_isas() == [*want, "base"]


def test_version_and_layers():
    assert medkernels.__version__ != "0.0.0+unknown"
    assert {"ops", "nn", "models"} <= set(medkernels.__all__)


def _undefined_symbols(path: str) -> list[str]:
    import subprocess

    out = subprocess.run(["nm", "-D", "--undefined-only", path], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()]


def test_the_binary_reaches_torch_only_through_the_stable_c_abi():
    """No torch C++ symbol is imported (no "undefined symbol: _ZN3c10..." under another torch): every function
    the extension takes from torch is a C function of its stable shim (aoti_torch_* / torch_*)."""
    import subprocess

    so = _library._C.__file__
    names = _undefined_symbols(so)
    mangled = [n for n in names if n.startswith("_Z")]
    demangled = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True).stdout
    torch_cpp = [d for d in demangled.splitlines() if any(ns in d for ns in ("c10::", "at::", "torch::", "caffe2::"))]
    assert not torch_cpp, torch_cpp
    from_torch = [n for n in names if n.startswith(("aoti_torch_", "torch_"))]
    assert "torch_call_dispatcher" in from_torch and "aoti_torch_library_init_def" in from_torch, from_torch
    # the C functions we take from libtorch_cpu are exactly that shim (its re-exported std:: symbols aside)
    lib = next(p for p in __import__("glob").glob(f"{torch.__path__[0]}/lib/libtorch_cpu.so"))
    out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert {n for n in names if n in exported and not n.startswith("_Z")} == set(from_torch)
