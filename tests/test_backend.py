"""The shared backend choice: order, overrides, errors and the debug log."""

import logging

import pytest
import torch

from medkernels.ops import BackendUnavailableError, choose_backend, selective_scan_fn


def _reasons(**blocked):
    def why(name):
        return lambda *args, forced=False: blocked.get(name)

    return {name: why(name) for name in ("cuda", "triton", "cpu", "reference")}


def test_auto_takes_the_first_backend_that_can_run_in_order():
    assert choose_backend("op", _reasons(), None) == "cuda"
    assert choose_backend("op", _reasons(cuda="no gpu"), "auto") == "triton"
    assert choose_backend("op", _reasons(cuda="no gpu", triton="no triton"), None) == "cpu"
    with pytest.warns(RuntimeWarning, match="op: no faster backend"):
        assert choose_backend("op", _reasons(cuda="a", triton="b", cpu="c"), None) == "reference"


def test_skipped_backends_are_logged_with_their_reason(caplog):
    with caplog.at_level(logging.DEBUG, logger="medkernels"):
        choose_backend("myop", _reasons(cuda="inputs are on cpu", triton="triton is not installed"), None)
    text = caplog.text
    assert "myop: skipping backend 'cuda': inputs are on cpu" in text
    assert "skipping backend 'triton': triton is not installed" in text


def test_forced_backend_that_cannot_run_names_the_reason():
    with pytest.raises(BackendUnavailableError, match=r"myop: backend='cuda' cannot run these inputs: no gpu here"):
        choose_backend("myop", _reasons(cuda="no gpu here"), "cuda")
    assert choose_backend("myop", _reasons(cuda="no gpu here"), "CPU") == "cpu"


def test_unknown_backend_name_is_a_value_error():
    with pytest.raises(ValueError, match=r"'fast' is not a backend"):
        choose_backend("op", _reasons(), "fast")


def test_environment_variable_overrides_the_choice(monkeypatch):
    monkeypatch.setenv("MEDKERNELS_BACKEND", "reference")
    assert choose_backend("op", _reasons(), None) == "reference"
    assert choose_backend("op", _reasons(), "cpu") == "cpu", "an explicit argument beats the environment"
    monkeypatch.setenv("MEDKERNELS_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match=r"MEDKERNELS_BACKEND='cuda' cannot run"):
        choose_backend("op", _reasons(cuda="no gpu"), None)
    monkeypatch.setenv("MEDKERNELS_BACKEND", "warp")
    with pytest.raises(ValueError, match=r"MEDKERNELS_BACKEND='warp' is not a backend"):
        choose_backend("op", _reasons(), None)


def test_real_op_on_cpu_tensors_picks_cpu_and_refuses_cuda(caplog, monkeypatch):
    u = torch.randn(1, 4, 8)
    args = (u, torch.rand(1, 4, 8), -torch.rand(4, 3), torch.randn(4, 3), torch.randn(4, 3))
    with caplog.at_level(logging.DEBUG, logger="medkernels"):
        out = selective_scan_fn(*args)
    assert "selective_scan_fn: skipping backend 'cuda': inputs are on cpu, not cuda" in caplog.text
    torch.testing.assert_close(out, selective_scan_fn(*args, backend="cpu"), rtol=0, atol=0)
    with pytest.raises(BackendUnavailableError, match="selective_scan_fn: backend='cuda' cannot run"):
        selective_scan_fn(*args, backend="cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # outside the interpreter, Triton needs CUDA tensors
    with pytest.raises(BackendUnavailableError, match="selective_scan_fn: backend='triton' cannot run"):
        selective_scan_fn(*args, backend="triton")


def test_falling_back_to_the_reference_warns_once_with_the_reasons():
    x = torch.zeros(2)
    reasons = _reasons(cuda="no CUDA build", triton="deterministic mode", cpu="inputs are on cpu-ish")
    with pytest.warns(
        RuntimeWarning,
        match=r"fallop: no faster backend can run these cpu inputs.*"
        r"skipped: cuda: no CUDA build; triton: deterministic mode",
    ):
        assert choose_backend("fallop", reasons, None, x) == "reference"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same fall-back again: silent
        assert choose_backend("fallop", reasons, None, x) == "reference"
        assert choose_backend("fallop", reasons, "reference", x) == "reference", "asked for: never a warning"


def test_without_the_extension_cpu_ops_raise_instead_of_running_the_reference(tmp_path):
    """A broken build (simulated: the extension module cannot be imported) is loud at import, and an op on
    CPU tensors raises instead of quietly running the Python-loop reference; the reference stays available."""
    import subprocess
    import sys

    code = """
import sys, warnings
sys.modules["medkernels._C"] = None  # the import fails, as for a build against another torch
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import medkernels
from medkernels import ops
assert any("are not loaded" in str(x.message) for x in w), [str(x.message) for x in w]
import torch
args = (torch.randn(1, 4, 8), torch.rand(1, 4, 8), -torch.rand(4, 3), torch.randn(4, 3), torch.randn(4, 3))
try:
    ops.selective_scan_fn(*args)
except ops.BackendUnavailableError as e:
    assert "did not load" in str(e) and "backend='reference'" in str(e), e
else:
    raise SystemExit("no error")
ops.selective_scan_fn(*args, backend="reference")
print("OK")
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "MEDKERNELS_BACKEND"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


@pytest.mark.parametrize(
    "build_info,message",
    [
        ("TORCH_BUILD_VERSION = '99.1'\nCUDA_VERSION = ''", r"this build supports torch >= 99.1, < 100"),
        ("TORCH_BUILD_VERSION = '1.0'\nCUDA_VERSION = ''", r"this build supports torch >= 1.0, < 2 "),
        ("TORCH_BUILD_VERSION = '2.0'\nCUDA_VERSION = '99.0'", r"this is a CUDA 99.0 build, but torch"),
    ],
    ids=["older-torch", "next-major", "other-cuda"],
)
def test_a_torch_outside_the_supported_range_never_loads_the_binary(tmp_path, build_info, message):
    """The extension is not even imported under a torch it does not support (so no import can fail on an
    undefined symbol): the warning names the supported range, and CPU ops say so."""
    import subprocess
    import sys

    code = f"""
import sys, types, warnings
info = types.ModuleType("medkernels._build_info")
exec({build_info!r}, info.__dict__)
info.TORCH_TARGET_VERSION = "2.10"
sys.modules["medkernels._build_info"] = info
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import medkernels
from medkernels import ops
assert "medkernels._C" not in sys.modules, "the binary was loaded"
msgs = [str(x.message) for x in w]
import re
assert any(re.search({message!r}, m) for m in msgs), msgs
import torch
try:
    ops.selective_scan_fn(torch.randn(1, 4, 8), torch.rand(1, 4, 8), -torch.rand(4, 3), torch.randn(4, 3),
                          torch.randn(4, 3))
except ops.BackendUnavailableError as e:
    assert re.search({message!r}, str(e)), e
else:
    raise SystemExit("no error")
print("OK")
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "MEDKERNELS_BACKEND"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


def test_the_installed_build_records_what_it_supports():
    """The installed wheel carries _build_info (the building torch = the oldest supported), and the running torch
    is inside its range (else the extension would not have loaded)."""
    from medkernels import _build_info
    from medkernels.ops import _library

    assert _library.HAS_C and _library.LOAD_ERROR is None
    built, have = _library._version(_build_info.TORCH_BUILD_VERSION), _library._version(torch.__version__)
    assert built <= have and have[0] == built[0]
    assert _build_info.TORCH_TARGET_VERSION == "2.10"


def test_every_public_op_answers_can_run_and_why_not():
    from medkernels import ops

    names = ops.ops_with_backends()
    assert {
        "selective_scan_fn",
        "causal_conv1d_fn",
        "na1d",
        "na2d",
        "na3d",
        "na2d_qk",
        "na2d_av",
        "dilated_attention3d",
        "dct2d",
        "idct2d",
        "furthest_point_sample",
        "knn",
        "rswaf_kan",
        "multi_order_selective_scan",
    } <= set(names)
    x = torch.randn(1, 4, 8)
    for name in names:
        assert ops.why_not(name, "reference", x) is None
        assert ops.why_not(name, "cuda", x) == "inputs are on cpu, not cuda"
        assert ops.can_run(name, "cpu", x), name
    with pytest.raises(KeyError, match="'nope' is not an op with backends"):
        ops.can_run("nope", "cpu", x)


def test_the_shared_rules(monkeypatch):
    from medkernels import ops

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors may run the Triton interpreter when asked
    x32, x64 = torch.randn(1, 4, 8), torch.randn(1, 4, 8, dtype=torch.float64)
    assert ops.why_not("selective_scan_fn", "triton", x64) == (
        "the Triton kernels compute in float32; float64 runs on the cpu or reference backend"
    )
    assert ops.why_not("na2d_qk", "triton", x32) == "na2d_qk has no Triton kernel"
    assert ops.why_not("knn", "cuda", x32.cuda() if torch.cuda.is_available() else x32) is not None
    prev = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert "atomics" in ops.why_not("multi_order_selective_scan", "triton", x32)
        B = torch.randn(1, 3, 8)  # variable B: the scan's Triton backward sums it with atomics
        assert "atomics" in ops.why_not("selective_scan_fn", "triton", x32, torch.randn(4, 3), B)
        assert ops.why_not("selective_scan_fn", "triton", x32, torch.randn(4, 3), torch.randn(4, 3)) is None
    finally:
        torch.use_deterministic_algorithms(prev)


def test_dilated_attention_dropout_runs_on_the_reference(monkeypatch):
    from medkernels import ops
    from medkernels.ops import _backend

    monkeypatch.setattr(_backend, "_WARNED", set())  # the fall-back warns once per process: not already, here

    q, k, v = (torch.randn(1, 2, 4, 4, 2, 8) for _ in range(3))
    assert ops.why_not("dilated_attention3d", "cpu", q, 0.1) == (
        "dropout on the attention weights runs on the reference backend only"
    )
    with pytest.raises(BackendUnavailableError, match="dropout"):
        ops.dilated_attention3d(q, k, v, 2, "local", dropout_p=0.1, backend="cpu")
    with pytest.warns(RuntimeWarning, match="dilated_attention3d: no faster backend.*dropout"):
        torch.manual_seed(0)
        out = ops.dilated_attention3d(q, k, v, 2, "local", dropout_p=0.5)
    torch.manual_seed(0)
    assert torch.equal(out, ops.dilated_attention3d_ref(q, k, v, 2, "local", dropout_p=0.5))
    assert not torch.equal(out, ops.dilated_attention3d(q, k, v, 2, "local"))
    with pytest.raises(ValueError, match=r"dilated_attention3d: dropout_p must be a float in \[0, 1\)"):
        ops.dilated_attention3d(q, k, v, 2, "local", dropout_p=1.0)
