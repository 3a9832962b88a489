"""scripts/gpu_compile_check.py's parsing and pass/fail rules (the compiles themselves run in CI, issue 12)."""

from __future__ import annotations

import importlib
import importlib.util
import pathlib
import shutil

import pytest
from kit import requires_triton

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("gpu_compile_check", ROOT / "scripts/gpu_compile_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PTXAS = """ptxas info    : 11 bytes gmem
ptxas info    : Compiling entry function '_fwd_kernel' for 'sm_90a'
ptxas info    : Function properties for _fwd_kernel
    216 bytes stack frame, 224 bytes spill stores, 216 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 216 bytes cumulative stack size
"""


def test_parses_the_ptxas_report(check):
    assert check.parse_ptxas(_PTXAS) == {"regs": 255, "stack": 216, "spill_stores": 224, "spill_loads": 216}
    with pytest.raises(ValueError, match="no ptxas -v report"):
        check.parse_ptxas("ptxas info    : 0 bytes gmem")


def _row(**kw):
    row = {
        "arch": "sm_80",
        "num_warps": 4,
        "regs": 128,
        "spill_stores": 0,
        "spill_loads": 0,
        "smem": 1024,
        "error": None,
    }
    row.update(kw)
    return row


def test_pass_and_fail_rules(check):
    budget = {"m.k": (64, "reason")}
    assert check.check_row(_row(), {}, "m.k") == []
    assert check.check_row(_row(error="CompilationError: x"), {}, "m.k") == ["compile error"]
    assert check.check_row(_row(smem=163 * 1024), {}, "m.k") == []
    assert "shared memory" in check.check_row(_row(smem=163 * 1024 + 1), {}, "m.k")[0]
    assert check.check_row(_row(arch="sm_90", smem=227 * 1024), {}, "m.k") == []
    assert check.check_row(_row(num_warps=16, regs=129), {}, "m.k")[0].startswith("129 registers")
    assert check.check_row(_row(spill_stores=32, spill_loads=32), budget, "m.k") == []
    assert "budget 64" in check.check_row(_row(spill_stores=32, spill_loads=40), budget, "m.k")[0]
    assert "budget 0" in check.check_row(_row(spill_stores=4), budget, "other.k")[0]
    assert check.check_row(_row(spill_stores=4), {}, "cold", enforce_spills=False) == []


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt (binutils)")
def test_reads_the_cuda_kernels_from_the_build_log(check, tmp_path):
    name = (
        "_ZN10medkernels4cuda50_GLOBAL__N__5f0e0754_17_selective_scan_cu_e403e320"
        "10bwd_kernelI6__halfLb0ELb1EEEvNS0_14ScanCudaParamsE"
    )
    log = tmp_path / "cuda-build.log"
    log.write_text(f"""  [3/5] Building CUDA object CMakeFiles/_C.dir/csrc/cuda/selective_scan.cu.o
  ptxas info    : Compiling entry function '{name}' for 'sm_80'
  ptxas info    : Function properties for {name}
      160 bytes stack frame, 36 bytes spill stores, 28 bytes spill loads
  ptxas info    : Used 128 registers, used 1 barriers, 160 bytes cumulative stack size, 4144 bytes smem
  ptxas info    : Compile time = 4204.444 ms
  ptxas info    : Compiling entry function '{name}' for 'sm_90'
  ptxas info    : Function properties for {name}
      128 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
  ptxas info    : Used 141 registers, used 1 barriers, 128 bytes cumulative stack size, 4144 bytes smem
""")
    rows = check.cuda_rows(log)
    assert [
        (r["kernel"], r["config"], r["arch"], r["regs"], r["spill_stores"] + r["spill_loads"], r["smem"]) for r in rows
    ] == [
        ("medkernels::cuda::bwd_kernel", "__half, false, true", "sm_80", 128, 64, 4144),
        ("medkernels::cuda::bwd_kernel", "__half, false, true", "sm_90", 141, 0, 4144),
    ]
    assert rows[0]["kernel"] in check.CUDA_HOT
    # the budget covers what the build reports today; one more word fails
    assert check.check_row(rows[0], check.CUDA_SPILL_BUDGET, rows[0]["kernel"]) == []
    assert check.check_row(
        dict(rows[0], spill_loads=rows[0]["spill_loads"] + 4), check.CUDA_SPILL_BUDGET, rows[0]["kernel"]
    )


@requires_triton
def test_every_spill_budget_names_a_kernel_the_check_compiles_and_a_reason(check):
    from medkernels import triton as mt

    kernels = {
        f"{name}.{c.kernel}"
        for name in mt.MODULES
        for c in importlib.import_module(f"medkernels.triton.{name}").configs()
    }
    assert set(check.SPILL_BUDGET) <= kernels
    assert set(check.CUDA_SPILL_BUDGET) <= set(check.CUDA_HOT)
    for limit, reason in [*check.SPILL_BUDGET.values(), *check.CUDA_SPILL_BUDGET.values()]:
        assert 0 < limit <= 128 and len(reason) > 20
