"""Start-up hook: run by ``medkernels_compat.pth`` (site-packages) only when ``MEDKERNELS_COMPAT`` is set.

Loads :mod:`medkernels.compat._finder` (standard library only: torch and medkernels are not imported
until a client imports a served name) and installs what the variable asks for. A malformed value is
reported on stderr and ignored: a start-up hook must never stop the interpreter.
"""

import importlib.util
import os
import sys


def _run() -> None:
    name = "medkernels.compat._finder"
    module = sys.modules.get(name)
    if module is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_finder.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    module.install_from_env()


try:
    _run()
except Exception as exc:  # noqa: BLE001 - report, never break start-up
    print(f"medkernels.compat: {exc} (MEDKERNELS_COMPAT ignored)", file=sys.stderr)
