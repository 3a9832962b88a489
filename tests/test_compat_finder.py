"""medkernels.compat's activation (install(), python -m medkernels.compat, the MEDKERNELS_COMPAT start-up hook)
and its policy towards real installed packages (never shadowed silently; prefer= decides)."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import pytest
from compat_kit import compat_fixture  # noqa: F401  (the `compat` fixture)

from medkernels.compat import CompatWarning
from medkernels.compat._finder import parse_env

pytestmark = pytest.mark.usefixtures("compat")
REPO = pathlib.Path(__file__).resolve().parents[1]
PTH = REPO / "medkernels" / "compat" / "medkernels_compat.pth"


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *sys.path[1:]]))
    env.pop("MEDKERNELS_COMPAT", None)
    env.update(extra)
    return env


def _fake_package(root: pathlib.Path, name: str, version: str, body: str) -> None:
    """A 'real' installed package: the module and its dist-info metadata."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(body)
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_bad_arguments_name_the_argument(compat):
    with pytest.raises(ValueError, match="packages"):
        compat.install("torchvision")
    with pytest.raises(TypeError, match="packages"):
        compat.install([3])
    with pytest.raises(ValueError, match="natten="):
        compat.install(natten="0.3")
    with pytest.raises(ValueError, match="prefer"):
        compat.install(prefer="fastest")
    with pytest.raises(ValueError, match="not among the packages"):
        compat.install("mamba", natten="0.17")
    assert compat.installed() is None
    assert parse_env("") is None and parse_env("0") is None
    cfg = parse_env("natten=0.17, mamba", "medkernels")
    assert cfg.packages == ("natten", "mamba_ssm", "causal_conv1d") and cfg.natten == "0.17"
    assert cfg.prefer == "medkernels"
    with pytest.raises(ValueError, match="MEDKERNELS_COMPAT"):
        parse_env("mamba_ssm=2.0")


def test_a_working_real_package_wins_unless_medkernels_is_preferred(compat, tmp_path, monkeypatch):
    _fake_package(tmp_path, "causal_conv1d", "9.9", "REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    compat.install("causal_conv1d")
    with pytest.warns(CompatWarning, match="imports and works, and prefer='real'"):
        import causal_conv1d
    assert causal_conv1d.REAL and importlib.metadata.version("causal_conv1d") == "9.9"
    assert compat.status()["causal_conv1d"].startswith("real:")

    compat.uninstall()
    del sys.modules["causal_conv1d"]
    compat.install("causal_conv1d", prefer="medkernels")
    with pytest.warns(CompatWarning, match="shadows the installed causal_conv1d 9.9"):
        import causal_conv1d
    assert not hasattr(causal_conv1d, "REAL") and callable(causal_conv1d.causal_conv1d_fn)
    assert compat.installed().decision("causal_conv1d").served_by == "medkernels"


def test_a_broken_real_package_falls_back_with_the_error(compat, tmp_path, monkeypatch):
    _fake_package(tmp_path, "mamba_ssm", "2.2.4", "import selective_scan_cuda_v0  # a CUDA build that is missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    compat.install("mamba_ssm")
    with pytest.warns(CompatWarning, match="failed to import: ModuleNotFoundError"):
        from mamba_ssm import Mamba  # noqa: F401
    import mamba_ssm.ops.selective_scan_interface as ssi

    assert mamba_ssm_served(ssi)


def mamba_ssm_served(module) -> bool:
    return getattr(module, "__medkernels_compat__", False) and hasattr(module, "mamba_inner_ref")


def test_a_real_natten_of_another_generation_is_not_used(compat, tmp_path, monkeypatch):
    _fake_package(tmp_path, "natten", "0.14.6", "from .natten2d import *\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    compat.install("natten", natten="0.21")
    with pytest.warns(CompatWarning, match="does not provide the natten 0.21 API"):
        import natten
    assert natten.__version__ == "0.21.7" and hasattr(natten, "na2d")


@pytest.mark.parametrize("name", ["causal_conv1d", "natten", "mamba_ssm"])
def test_uninstall_purges_served_modules(compat, name):
    """Served by medkernels (forced where the real package is installed), then uninstalled: the served
    modules leave sys.modules, and the name imports as it would without medkernels (the real package or
    nothing)."""
    real = importlib.machinery.PathFinder.find_spec(name) is not None
    compat.install(name, prefer="medkernels")
    with warnings.catch_warnings():
        warnings.simplefilter("error" if not real else "ignore")  # not installed: no warning at all
        served = importlib.import_module(name)
    assert sys.modules[name] is served and compat.status()[name].startswith("medkernels")
    compat.uninstall()
    assert name not in sys.modules and compat.status() == {}
    if not real:
        with pytest.raises(ImportError):
            importlib.import_module(name)
        return
    try:
        again = importlib.import_module(name)
    except ImportError:
        # the real mamba_ssm / causal_conv1d need their CUDA extensions, which medkernels no longer serves
        assert name in ("mamba_ssm", "causal_conv1d")
    else:
        assert again is not served and "site-packages" in (again.__file__ or "")


CLIENT = """
import sys
import natten
from natten.functional import na2d
print(natten.__version__, hasattr(natten, "context"), sys.argv[1:], __name__)
"""


def test_command_line_runs_the_script_with_its_arguments(tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    cmd = [sys.executable, "-m", "medkernels.compat", "--natten", "0.17", str(script), "--lr", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[0] == "0.17.5 True ['--lr', '1'] __main__"
    as_module = [sys.executable, "-m", "medkernels.compat", "--packages", "natten", "-m", "client", "x"]
    run = subprocess.run(as_module, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[0] == "0.21.7 True ['x'] __main__"
    bad = subprocess.run(
        [sys.executable, "-m", "medkernels.compat", "--natten", "9", str(script)],
        capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and "--natten" not in bad.stdout and "natten='9'" in bad.stderr


HOOK = """
import site, sys
site.addsitedir(sys.argv[1])  # processes medkernels_compat.pth as site-packages would at start-up
print("torch imported by the hook:", "torch" in sys.modules)
try:
    import natten
    print("natten", natten.__version__)
except ImportError:
    print("no natten")
"""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "no natten"),
        ("natten=0.17", "natten 0.17.5"),
        ("all", "natten 0.21.7"),
        ("natten=7", "no natten"),
    ],
)
def test_environment_variable_start_up_hook(tmp_path, value, expected):
    shutil.copy(PTH, tmp_path / PTH.name)
    env = _env() if value is None else _env(MEDKERNELS_COMPAT=value)
    run = subprocess.run(
        [sys.executable, "-c", HOOK, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    if value in (None, "natten=7") and importlib.machinery.PathFinder.find_spec("natten") is not None:
        expected = "natten " + importlib.metadata.version("natten")  # a real natten is installed: no hook
    assert lines == ["torch imported by the hook: False", expected]
    if value == "natten=7":
        assert "MEDKERNELS_COMPAT" in run.stderr and "ignored" in run.stderr
